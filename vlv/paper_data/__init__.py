"""The paper profile's data: downloads, MS-COCO 2014 val and the LAION pool (rules/download.smk)."""
