"""Run manifests: the provenance written beside every artefact."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "diffusers",
    "accelerate",
    "numpy",
    "pillow",
    "scipy",
)


def git_revision(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def cpu_description() -> dict[str, str | None]:
    """The CPU model and the vector instruction set torch's kernels dispatch to: training on the CPU
    is bit-reproducible on one machine, not across these (README, "Reproducibility")."""
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or None
    torch = sys.modules.get("torch")  # only when the stage loaded it: light stages stay light
    return {"model": model, "torch_capability": torch.backends.cpu.get_cpu_capability() if torch else None}


def build_manifest(
    stage: str, config: dict, seed: int | None, device: str = "cpu", precision: str = "fp32", **extra
) -> dict:
    """Everything needed to tell how an artefact was made. Volatile fields live under ``run``; the
    shards this process found cut short, with what was read of each, under ``broken_shards``."""
    from vlv.data.shards import broken_shards

    return {
        "stage": stage,
        "config": config,
        "seed": seed,
        "device": device,
        "precision": precision,
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "run": {
            "git_revision": git_revision(Path(__file__).resolve().parent),
            "platform": platform.platform(),
            "cpu": cpu_description(),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        **({"broken_shards": broken} if (broken := broken_shards()) else {}),
        **extra,
    }


def write_manifest(path: str | os.PathLike, manifest: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
