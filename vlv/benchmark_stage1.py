"""Stage-1 training speed: the official code's setting against ours, side by side, in one run.

(a) official-style: fp32, the VAE encodes every image at every step, gradient checkpointing on;
(b) ours: bf16 where the device has it (CUDA; fp32 on CPU, where bf16 autocast is slower), VAE
latent distributions cached once, no gradient checkpointing, SDPA attention (the default).
Both run the real ``vlv.distill_stage1`` for ``--steps`` steps on the same data and report the
training images/s it measured (setup excluded). Prints a table and the ratio b/a.

With ``--paper-sized paper`` it builds random-weight folders of the paper profile's classes at
paper size (Florence-2-large, the OpenCLIP-H text tower, the SD-2.1 UNet and VAE, 384 px;
``vlv.models.paper_sized``) and Shapes images at 384 px, so it runs where no weights can be
downloaded (speed does not depend on the weights); on CUDA it also reports peak memory and the
achieved model FLOP/s (FLOPs of one training step counted with ``torch.utils.flop_counter``).
``--paper-sized tiny`` is the same path at toy size (tests).

Examples:
    # toy config on this CPU
    python -m vlv.benchmark_stage1 --params "$(python -m vlv.config stage1)" \
        --images results/generate_shapes/pool --subset results/subset/subset.json \
        --vision models/toy/vision --decoder models/toy/t2i --steps 30
    # paper-sized, random weights, on a GPU
    python -m vlv.benchmark_stage1 --params "$(python -m vlv.config stage1 --configfile config.yaml config/paper.yaml)" \
        --paper-sized paper --batch-size 32 --steps 20 --out stage1_speed_gpu.json
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


def paper_sized_inputs(tmp: Path, preset: str, n_images: int) -> tuple[str, str, str, str, int]:
    """Random-weight paper-class folders and Shapes images at their resolution: (images, subset,
    vision, decoder, image side)."""
    from .data.shards import encode_png, write_shard
    from .models.paper_sized import build_stage1_stack
    from .shapes.world import WorldSpec, render, sample_scenes

    vision, decoder, side = build_stage1_stack(tmp / "models", preset)
    spec = WorldSpec(image_size=side)
    scenes = sample_scenes(spec, 0, n_images)
    images = tmp / "images"
    images.mkdir()
    write_shard(images / "shard-00000.tar", ((f"{s.id:08d}", {"png": encode_png(render(s, spec))}) for s in scenes))
    subset = tmp / "subset.json"
    subset.write_text(json.dumps({"kept": [{"key": f"{s.id:08d}"} for s in scenes]}))
    return str(images), str(subset), str(vision), str(decoder), side


def step_flops(cfg: dict, vision: str, decoder: str, batch: int) -> float:
    """Model FLOPs of one stage-1 training step (forward and backward) per image."""
    from torch.utils.flop_counter import FlopCounterMode

    device = "cuda" if torch.cuda.is_available() else "cpu"
    enc, dec = distill_stage1.build({**cfg, "gradient_checkpointing": False}, vision, decoder, device)
    enc.to(device)
    side = cfg["image_size"]
    images = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8).numpy()
    pv = enc.preprocess(images).to(device)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    latents = dec.latent_dist(x).mode() * dec.vae.config.scaling_factor
    noise, t = dec.draw_noise(latents.cpu(), torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        loss = dec.diffusion_loss(latents, dec.condition(enc(pv)), noise.to(device), t.to(device))
        loss.backward()
    return counter.get_total_flops() / batch


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    for name in ("--images", "--subset", "--vision", "--decoder"):
        p.add_argument(name, default=None, help="(not with --paper-sized)")
    p.add_argument("--paper-sized", choices=["paper", "tiny"], default=None, help="random-weight paper-class models")
    p.add_argument("--n-images", type=int, default=256, help="--paper-sized: training images to generate")
    p.add_argument("--batch-size", type=int, default=None, help="override stage1.batch_size")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default=None, help="optional JSON report")
    args = p.parse_args(argv)
    setup_logging()
    cfg = load_params(args.params)
    if args.batch_size:
        cfg["batch_size"] = args.batch_size
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.paper_sized:
            images, subset, vision, decoder, side = paper_sized_inputs(Path(tmp), args.paper_sized, args.n_images)
            cfg["image_size"] = side
        elif None in (args.images, args.subset, args.vision, args.decoder):
            raise SystemExit("give --images, --subset, --vision and --decoder, or --paper-sized")
        else:
            images, subset, vision, decoder = args.images, args.subset, args.vision, args.decoder
        flops = step_flops(cfg, vision, decoder, min(cfg["batch_size"], 4))
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
                    images,
                    "--subset",
                    subset,
                    "--vision",
                    vision,
                    "--decoder",
                    decoder,
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
                "peak_memory_gib": man.get("peak_memory_gib"),
                "achieved_tflops": round(flops * man["images_per_second"] / 1e12, 3),
            }
    ratio = rows["b_ours"]["images_per_second"] / rows["a_official_style"]["images_per_second"]
    print(f"model FLOPs per training image: {flops / 1e9:.2f} GFLOP ({args.paper_sized or 'given models'})")
    print(
        f"{'setting':18s} {'device':8s} {'precision':9s} {'cached':6s} {'ckpt':5s} {'batch':>5s} {'images/s':>9s}"
        f" {'peak GiB':>9s} {'TFLOP/s':>8s}"
    )
    for name, r in rows.items():
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        print(
            f"{name:18s} {r['device']:8s} {r['precision']:9s} {str(r['cache_latents']):6s} "
            f"{str(r['gradient_checkpointing']):5s} {r['batch_size']:5d} {r['images_per_second']:9.1f} {peak:>9s} "
            f"{r['achieved_tflops']:8.3f}"
        )
    print(f"ratio b/a: {ratio:.2f}")
    if args.out:
        report = {
            "settings": rows,
            "ratio_b_over_a": ratio,
            "gflops_per_image": flops / 1e9,
            "models": args.paper_sized,
        }
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
