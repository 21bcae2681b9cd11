"""Stage-1 training speed: the official code's setting against ours, side by side, in one run.

(a) official-style: fp32, the VAE encodes every image at every step, gradient checkpointing on;
(b) ours: bf16 where the device has it (CUDA; fp32 on CPU, where bf16 autocast is slower), VAE
latent distributions cached once, no gradient checkpointing, SDPA attention (the default).
Both run the real ``vlv.distill_stage1`` for ``--steps`` steps on the same data and report the
training images/s it measured (setup excluded). Prints a table and the ratio b/a.

Example (toy config on this CPU):
    python -m vlv.benchmark_stage1 --params "$(python -m vlv.config stage1)" \
        --images results/generate_shapes/pool --subset results/subset/subset.json \
        --vision models/toy/vision --decoder models/toy/t2i --steps 30
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from . import distill_stage1
from .cli_common import load_params, setup_logging, stage_parser

SETTINGS = {
    "a_official_style": {"precision": "fp32", "cache_latents": False, "gradient_checkpointing": True},
    "b_ours": {
        "precision": "bf16" if torch.cuda.is_available() else "fp32",
        "cache_latents": True,
        "gradient_checkpointing": False,
    },
}


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    for name in ("--images", "--subset", "--vision", "--decoder"):
        p.add_argument(name, required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default=None, help="optional JSON report")
    args = p.parse_args(argv)
    setup_logging()
    cfg = load_params(args.params)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, over in SETTINGS.items():
            params = {
                **cfg,
                **over,
                "steps": args.steps,
                "warmup_steps": 1,
                "checkpoint_every": 10**9,
                "log_every": max(1, args.steps // 5),
            }
            out = Path(tmp) / name
            distill_stage1.main(
                [
                    "--params",
                    json.dumps(params),
                    "--images",
                    args.images,
                    "--subset",
                    args.subset,
                    "--vision",
                    args.vision,
                    "--decoder",
                    args.decoder,
                    "--out",
                    str(out),
                    "--work",
                    str(Path(tmp) / f"w_{name}"),
                ]
            )
            man = json.loads((out / "manifest.json").read_text())
            rows[name] = {
                **over,
                "batch_size": cfg["batch_size"],
                "steps": args.steps,
                "device": man["device"],
                "images_per_second": man["images_per_second"],
            }
    ratio = rows["b_ours"]["images_per_second"] / rows["a_official_style"]["images_per_second"]
    print(f"{'setting':18s} {'device':8s} {'precision':9s} {'cached':6s} {'ckpt':5s} {'batch':>5s} {'images/s':>9s}")
    for name, r in rows.items():
        print(
            f"{name:18s} {r['device']:8s} {r['precision']:9s} {str(r['cache_latents']):6s} {str(r['gradient_checkpointing']):5s} {r['batch_size']:5d} {r['images_per_second']:9.1f}"
        )
    print(f"ratio b/a: {ratio:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": rows, "ratio_b_over_a": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
