"""How the direct captioner's learning rate and trainable set were chosen (`stage2.direct`).

Trains the direct captioner (`finetune_stage2 --init direct`) on the whole pair set with each
candidate, every other value from the config, and records each run's validation curve: the mean
caption token loss on the held-out validation part of the pairs (never the evaluation split) every
`validate_every` steps. The candidate with the lowest validation loss is the one to put in
config.yaml; its step of lowest loss is what each run keeps anyway. Writes one JSON with the curves,
the seconds and the machine, and prints a table. About 6-8 minutes per candidate on 2 CPU cores (toy).

    HF_HUB_OFFLINE=1 python scripts/direct_selection.py --lr 3e-4 1e-3 3e-3 --trainable all_but_vision all \\
        --out results/figures/direct_selection_cpu.json
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shutil
import time
from pathlib import Path

from vlv.config import load_config, stage_params
from vlv.manifest import build_manifest, write_manifest
from vlv.stages import finetune_stage2


def run_one(cfg: dict, params: dict, work: Path, images: str, captions: str) -> dict:
    out = work / "out"
    shutil.rmtree(work, ignore_errors=True)
    m = cfg["models"]
    t0 = time.time()
    finetune_stage2.main([
        "--params", json.dumps(params), "--init", "direct", "--encoder", m["vision_encoder"],
        "--t2i", m["t2i"], "--llm", m["llm"], "--images", images, "--captions", captions,
        "--out", str(out), "--work", str(work / "ckpt"), "--cpu",
    ])  # fmt: skip
    seconds = time.time() - t0
    with (out / "validation.csv").open() as f:
        curve = [{"step": int(r["step"]), "validation_loss": float(r["validation_loss"])} for r in csv.DictReader(f)]
    chosen = json.loads((out / "manifest.json").read_text())["validation"]
    shutil.rmtree(work, ignore_errors=True)
    return {"seconds": round(seconds, 1), **chosen, "curve": curve}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=["config.yaml"])
    p.add_argument("--lr", type=float, nargs="+", required=True)
    p.add_argument("--trainable", nargs="+", default=["all_but_vision"], choices=["all_but_vision", "all"])
    p.add_argument("--steps", type=int, default=None, help="default: stage2.direct.steps")
    p.add_argument("--images", default="results/generate_shapes/pairs")
    p.add_argument("--captions", default="results/synthesize_captions/captions.jsonl")
    p.add_argument("--work", default="work/direct_selection")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cfg = load_config(*a.config)
    base = stage_params(cfg, "stage2", "direct_pairs100")
    runs = []
    for trainable, lr in itertools.product(a.trainable, a.lr):
        params = {**base, "lr": lr, "trainable": trainable, "steps": a.steps or base["steps"]}
        result = run_one(cfg, params, Path(a.work) / f"{trainable}_lr{lr:g}", a.images, a.captions)
        runs.append({"trainable": trainable, "lr": lr, "steps": params["steps"], **result})
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "curve"}), flush=True)
        best = min(runs, key=lambda r: r["validation_loss"])  # written after each run: a stop keeps the finished ones
        write_manifest(a.out, build_manifest("direct_selection", base, int(base["seed"]), runs=runs, best=best))
    print(f"\n{'trainable':<16}{'lr':>8}{'best step':>11}{'val loss':>10}{'final':>8}{'s':>7}")
    for r in runs:
        print(f"{r['trainable']:<16}{r['lr']:>8g}{r['chosen_step']:>11}{r['validation_loss']:>10.4f}"
              f"{r['curve'][-1]['validation_loss']:>8.4f}{r['seconds']:>7.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
