"""Speed benchmarks at the paper's sizes (random weights): ``python -m vlv.bench.<name> --help``."""
