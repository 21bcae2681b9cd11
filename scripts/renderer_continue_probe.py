"""Probe (issue 24): does the evaluation renderer bind position if it trains longer?

The committed ``models/toy/renderer`` (4000 steps at batch 128 from scratch) puts 71 % of the objects
in the right cell; the smaller stage-1 decoder bound position fully on the same samples. Training a
renderer from scratch for longer costs more than a session of this CPU, so this probe asks the
cheaper question first: continued from the committed weights and tokenizer, for ``--steps`` more
steps of its own recipe (its loss, batch and caption mix; a fresh pool and data seed, ``--seed``;
warm-up, then cosine from ``--lr``), does the right-cell share rise? It trains through
``vlv.toy.pretrain_toy_t2i`` itself (checkpoints, resume and manifest included), only starting from
the committed text encoder, UNet and tokenizer instead of new ones. The benchmark of its output is
``python -m vlv.toy.evaluate_standins`` as the ``benchmark_toy_standins`` rule runs it.

Not part of the pipeline: a continued renderer is not what ``pretrain_toy`` makes from scratch, so
its weights are not committed from here; the answer is in docs/toy-world.md and
results/figures/renderer_continue_probe_cpu.json.

Example:
    python scripts/renderer_continue_probe.py --steps 1000 --out /tmp/renderer_cont --work /tmp/renderer_cont_work
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def continued(src: Path):
    """Builders for pretrain_toy_t2i that return the committed renderer's parts instead of new ones."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return {
        "build_unet": lambda *a, **k: UNet2DConditionModel.from_pretrained(src / "unet"),
        "build_text_encoder": lambda *a, **k: CLIPTextModel.from_pretrained(src / "text_encoder"),
        "train_clip_tokenizer": lambda *a, **k: CLIPTokenizer.from_pretrained(src / "tokenizer"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=str(ROOT / "models/toy/renderer"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the continuation")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=201, help="data seed (the committed run used 200)")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True)
    args = p.parse_args(argv)

    cfg = json.loads(
        subprocess.run(
            [sys.executable, "-m", "vlv.config", "pretrain_toy.renderer"], cwd=ROOT, capture_output=True, text=True,
            check=True,
        ).stdout
    )  # fmt: skip
    cfg["train"].update(steps=args.steps, lr=args.lr, warmup_steps=args.warmup, seed=args.seed)
    cfg["train"]["continued_from"] = str(args.src)  # recorded in the manifest's config

    import vlv.toy.pretrain_toy_t2i as t2i

    for name, builder in continued(Path(args.src)).items():
        setattr(t2i, name, builder)
    return t2i.main(["--params", json.dumps(cfg), "--out", args.out, "--work", args.work])


if __name__ == "__main__":
    raise SystemExit(main())
