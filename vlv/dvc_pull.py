"""``vlv pull``: ``dvc pull``, then file times that let Snakemake agree the pulled artefacts are current.

DVC restores files by content and does not keep their modification times, while Snakemake reruns a
job whose input is newer than its output: after a plain ``dvc pull`` in a fresh clone,
``snakemake all`` would plan to redo the whole pipeline. When ``dvc status`` says the workspace
matches ``dvc.lock`` (so the pulled files are exactly what the recorded stages produced), this
gives every DVC-tracked output a time in pipeline order: stages in ``dvc.yaml`` order, outs within
a stage upstream first (dvc.yaml lists them so). If the workspace does not match, it changes
nothing and says so: then the artefacts are not the recorded ones and rerunning is right.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml


def tracked_outputs(dvc_yaml: Path) -> list[str]:
    """Every out and metric path of every stage, in pipeline order."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    paths = []
    for stage in stages.values():
        for kind in ("outs", "metrics"):
            for item in stage.get(kind, []):
                paths.append(next(iter(item)) if isinstance(item, dict) else item)
    return paths


def set_times_in_order(root: Path, paths: list[str], start: float | None = None) -> int:
    """Give each path (every file under a folder, and the folder) a later time than the one before."""
    t = time.time() - 2.0 * len(paths) if start is None else start
    n = 0
    for rel in paths:
        p = root / rel
        if not p.exists():
            continue
        for f in sorted(p.rglob("*")) if p.is_dir() else []:
            os.utime(f, (t, t))
            n += 1
        os.utime(p, (t, t))
        n += 1
        t += 2.0  # beyond any file system's time resolution
    return n


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    root = Path.cwd()
    if not (root / "dvc.yaml").exists():
        print("vlv pull: run it from the repository root (no dvc.yaml here)", file=sys.stderr)
        return 2
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    if subprocess.run([dvc, "pull", *argv], cwd=root).returncode != 0:
        print("vlv pull: dvc pull failed; file times left as they are", file=sys.stderr)
        return 1
    status = subprocess.run([dvc, "status", "--quiet"], cwd=root)
    if status.returncode != 0:
        print(
            "vlv pull: the workspace does not match dvc.lock (see `dvc status`); file times left as they are, "
            "so Snakemake will rerun what changed",
            file=sys.stderr,
        )
        return 1
    paths = tracked_outputs(root / "dvc.yaml")
    # later than every source file (a fresh clone dates them all "now"), spaced 2 s apart
    sources = [f for d in ("vlv", "rules", "schemas", "models", "config") for f in (root / d).rglob("*") if f.is_file()]
    sources += [root / "Snakefile", root / "config.yaml"]
    newest = max(f.stat().st_mtime for f in sources if f.exists())
    n = set_times_in_order(root, paths, start=max(newest + 2.0, time.time() - 2.0 * len(paths)))
    print(
        f"vlv pull: {n} pulled files and folders dated in pipeline order; `snakemake -n all` should find nothing to do"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
