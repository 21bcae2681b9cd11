"""Data containers: WebDataset-style tar shards of encoded images with JSON metadata."""
