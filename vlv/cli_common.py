"""Argument handling shared by the stage modules: every stage reads its config values as JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--params",
        required=True,
        help="the stage's config values as a JSON object (the Snakemake rule passes them from config.yaml)",
    )
    return p


def load_params(text: str) -> dict:
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--params is not valid JSON: {e}") from None
    if not isinstance(params, dict):
        raise SystemExit("--params must be a JSON object")
    return params


def setup_logging() -> logging.Logger:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    return logging.getLogger("vlv")
