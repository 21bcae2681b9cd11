"""Local-first model loading: a path that is not a folder fails at once, saying what to fetch."""

from __future__ import annotations

import os
from pathlib import Path


class MissingModelError(FileNotFoundError):
    pass


def require_local(name_or_path: str | os.PathLike, what: str) -> str:
    """Return a local folder for ``name_or_path``; a hub id must already be in the local cache.

    Offline (``HF_HUB_OFFLINE=1``, as in tests and CI) a missing hub id would otherwise fail only
    deep inside ``from_pretrained``; here it fails first, with the command that fetches it.
    """
    p = Path(name_or_path)
    if p.is_dir():
        return str(p)
    name = str(name_or_path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_like_path:
        raise MissingModelError(
            f"{what}: folder '{name}' does not exist. For the toy profile the stand-ins are committed under "
            "models/toy/ (regenerate with `snakemake --cores 2 pretrain_toy`); check the path in the config."
        )
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception as e:  # huggingface_hub raises several types for "not cached"
        raise MissingModelError(
            f"{what}: '{name}' is not in the local Hugging Face cache and this run is offline. "
            f"Fetch it once with `huggingface-cli download {name}` (or `hf download {name}`) on a machine with "
            f"internet access, or set the config entry to a local folder. ({type(e).__name__})"
        ) from None


def is_local_model(name_or_path: str | os.PathLike) -> bool:
    """True for a folder path (existing or to be made by the workflow), False for a hub id."""
    name = str(name_or_path)
    return Path(name).exists() or name.startswith((".", "/", "~", "models/", "results/")) or name.count("/") != 1
