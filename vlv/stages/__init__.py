"""The pipeline's stages: one module per Snakemake rule, named as the rule and its results folder."""
