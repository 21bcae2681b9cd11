"""Stage-1 training speed: the official code's setting against ours, side by side, in one run.

(a) official-style: fp32, the VAE encodes every image at every step, gradient checkpointing on;
(b) ours: bf16 where the device has it (CUDA; fp32 on CPU, where bf16 autocast is slower), VAE
latent distributions cached once, no gradient checkpointing, SDPA attention (the default);
(c) ours with the frozen vision tower's features cached too (``stage1.cache_vision_features``);
``--large-batch N`` adds (c) at batch N; ``--tuned`` adds (d): (c) at that batch with the frozen
UNet stored in bf16 (CUDA), laid out channels_last and compiled (``torch.compile``; its compiling
falls in the first step, which the rate leaves out). Each runs the real ``vlv.stages.distill_stage1`` in its own
process (as a workflow job does) for ``--steps`` steps on the same data; the table gives images/s
after the first step (kernel selection and allocator growth left out; the whole-run rate is in the
JSON), the speed-up over (a) and the ratio b/a.

With ``--paper-sized paper`` it builds random-weight folders of the paper profile's classes at
paper size (Florence-2-large, the OpenCLIP-H text tower, the SD-2.1 UNet and VAE, 384 px;
``vlv.models.paper_sized``) and Shapes images at 384 px, so it runs where no weights can be
downloaded (speed does not depend on the weights); on CUDA it also reports peak memory and the
achieved model FLOP/s (FLOPs of one training step counted with ``torch.utils.flop_counter``; a
setting with cached vision features is credited only the FLOPs it still does).
``--paper-sized tiny`` is the same path at toy size (tests). ``scripts/gpu_benchmarks.sh`` runs
this and the stage-2 training benchmark on a GPU in one go.

Examples:
    # toy config on this CPU
    python -m vlv.bench.stage1 --params "$(python -m vlv.config stage1)" \
        --images results/generate_shapes/pool --subset results/subset/subset.json \
        --vision models/toy/vision --decoder models/toy/t2i --steps 30
    # paper-sized, random weights, on a GPU
    python -m vlv.bench.stage1 --params "$(python -m vlv.config stage1 --configfile config.yaml config/paper.yaml)" \
        --paper-sized paper --batch-size 32 --large-batch 128 --steps 12 --out results/figures/stage1_speed_h200.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.stages import distill_stage1

SETTINGS = {
    "a_official_style": {
        "precision": "fp32",
        "cache_latents": False,
        "cache_vision_features": False,
        "gradient_checkpointing": True,
    },
    "b_ours": {
        "precision": "bf16" if torch.cuda.is_available() else "fp32",
        "cache_latents": True,
        "cache_vision_features": False,
        "gradient_checkpointing": False,
    },
    # the frozen vision tower's features cached too (half of a paper-sized step's FLOPs)
    "c_ours_vision_cached": {
        "precision": "bf16" if torch.cuda.is_available() else "fp32",
        "cache_latents": True,
        "cache_vision_features": True,
        "gradient_checkpointing": False,
    },
}
# --tuned: (c) with the frozen UNet's speed settings (bf16 storage where the device computes in bf16,
# channels_last, torch.compile), at the large batch
TUNED = {"frozen_bf16": torch.cuda.is_available(), "channels_last": True, "compile_unet": True}
TARGET_PER_GPU = 250  # images/s per H200 (the stage-1 issue's target)


def steady_rate(loss_csv: Path, batch: int) -> float | None:
    """Images/s after the first logged step (log_every 1), so start-up work (kernel selection,
    allocator growth, the loader's first batch) is left out; None with fewer than two rows."""
    import csv

    with loss_csv.open() as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 2:
        return None
    steps = int(rows[-1]["step"]) - int(rows[0]["step"])
    seconds = float(rows[-1]["seconds"]) - float(rows[0]["seconds"])
    return steps * batch / seconds if seconds > 0 else None


def write_shapes_images(folder: Path, side: int, n: int) -> list[str]:
    """``n`` Shapes images of ``side`` px as one tar shard in ``folder``; their keys."""
    from vlv.data.shards import encode_png, write_shard
    from vlv.shapes.world import WorldSpec, render, sample_scenes

    spec = WorldSpec(image_size=side)
    scenes = sample_scenes(spec, 0, n)
    folder.mkdir(parents=True)
    write_shard(folder / "shard-00000.tar", ((f"{s.id:08d}", {"png": encode_png(render(s, spec))}) for s in scenes))
    return [f"{s.id:08d}" for s in scenes]


def paper_sized_inputs(tmp: Path, preset: str, n_images: int, models: str | None = None):
    """Random-weight paper-class folders (built in ``models``, or reused from there) and Shapes images
    at their resolution: (images, subset, vision, decoder, image side)."""
    from vlv.models.paper_sized import stage1_stack

    vision, decoder, side = stage1_stack(Path(models) if models else tmp / "models", preset)
    keys = write_shapes_images(tmp / "images", side, n_images)
    subset = tmp / "subset.json"
    subset.write_text(json.dumps({"kept": [{"key": k} for k in keys]}))
    return str(tmp / "images"), str(subset), str(vision), str(decoder), side


def step_flops(cfg: dict, vision: str, decoder: str, batch: int) -> tuple[float, float]:
    """Model FLOPs per image of one stage-1 training step (forward and backward), and of the vision
    tower's forward alone (what cached vision features save)."""
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
        feats = enc.image_features(pv)
        vision_flops = counter.get_total_flops()
        loss = dec.diffusion_loss(latents, dec.condition(enc(image_features=feats)), noise.to(device), t.to(device))
        loss.backward()
    del enc, dec, loss, feats
    free_device_memory()  # for the stages' own processes
    return counter.get_total_flops() / batch, vision_flops / batch


def run_stage(module: str, argv: list[str], accelerate_config: str | None = None) -> str | None:
    """Run a stage in its own process (its own accelerate state, precision and device memory, as a
    workflow job has), or through ``accelerate launch`` with ``accelerate_config`` (one process); None
    when it succeeded, else the last lines of its output."""
    import socket
    import subprocess
    import sys

    launch = []
    if accelerate_config:
        with socket.socket() as s:  # a free port for the launcher's rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch = ["-m", "accelerate.commands.launch", "--config_file", accelerate_config, "--num_processes", "1",
                  "--main_process_port", str(port)]  # fmt: skip
    done = subprocess.run([sys.executable, *launch, "-m", module, *argv], capture_output=True, text=True)
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return " | ".join(lines[-3:]) or f"exit {done.returncode}"


def write_report(path: str, report: dict) -> None:
    """A benchmark's JSON report, with the device and torch it ran on and the manifests' ``run`` record
    (git revision, platform, CPU, time)."""
    from vlv.manifest import build_manifest

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    machine = {"device_name": device, "torch": torch.__version__, "run": build_manifest("benchmark", {}, None)["run"]}
    Path(path).write_text(json.dumps({**report, **machine}, indent=2) + "\n")


def free_device_memory() -> None:
    """Give back the device memory of this process's dropped models (the FLOP count's), so the
    stages' own processes have the whole device."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _parser():
    p = stage_parser(__doc__)
    for name in ("--images", "--subset", "--vision", "--decoder"):
        p.add_argument(name, default=None, help="(not with --paper-sized)")
    p.add_argument("--paper-sized", choices=["paper", "tiny"], default=None, help="random-weight paper-class models")
    p.add_argument("--models", default=None, help="--paper-sized: build the folders here, or reuse them")
    p.add_argument("--n-images", type=int, default=256, help="--paper-sized: training images to generate")
    p.add_argument("--batch-size", type=int, default=None, help="override stage1.batch_size")
    p.add_argument("--large-batch", type=int, default=None, help="also run the last setting at this batch size")
    p.add_argument("--tuned", action="store_true", help="also run (d): (c) with the UNet's speed settings")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default=None, help="optional JSON report")
    return p


def planned_runs(cfg: dict, large_batch: int | None, tuned: bool) -> list[tuple[str, dict, int]]:
    """(name, the settings it changes, batch size) of each run: SETTINGS, then the optional extras."""
    runs = [(name, over, cfg["batch_size"]) for name, over in SETTINGS.items()]
    if large_batch:
        name, over, _ = runs[-1]
        runs.append((f"{name}_b{large_batch}", over, large_batch))
    if tuned:
        name, over, batch = runs[-1]
        runs.append((f"d_tuned_b{batch}", {**over, **TUNED}, batch))
    return runs


def run_setting(cfg: dict, over: dict, batch: int, steps: int, inputs: tuple, tmp: Path, name: str, flops) -> dict:
    """One setting trained by the stage itself for ``steps`` steps: its row of the report."""
    images, subset, vision, decoder = inputs
    params = {
        **cfg,
        **{k: False for k in TUNED},  # the UNet's speed settings only where a setting names them
        **over,
        "batch_size": batch,
        "noise_draws": 1,  # a training-objective choice, not a speed one: images/s as the paper trains
        "steps": steps,
        "warmup_steps": 1,
        "checkpoint_every": 10**9,
        "log_every": 1,
    }
    out = tmp / name
    args_run = ["--params", json.dumps(params), "--images", images, "--subset", subset, "--vision", vision,
                "--decoder", decoder, "--out", str(out), "--work", str(tmp / f"w_{name}")]  # fmt: skip
    error = run_stage("vlv.stages.distill_stage1", args_run)
    if error:  # e.g. a setting too large for this device: say so, go on
        return {**over, "batch_size": batch, "error": error}
    man = json.loads((out / "manifest.json").read_text())
    rate = steady_rate(out / "loss.csv", batch) or man["images_per_second"]
    total, vision_part = flops
    model_flops = total - (vision_part if over["cache_vision_features"] else 0.0)
    return {
        **over,
        "batch_size": batch,
        "steps": steps,
        "device": man["device"],
        "images_per_second_whole_run": man["images_per_second"],
        "images_per_second": round(rate, 2),
        "peak_memory_gib": man.get("peak_memory_gib"),
        "achieved_tflops": round(model_flops * rate / 1e12, 3),
    }


def print_table(rows: dict, flops: float, vision_flops: float, models: str | None) -> float:
    """The report as a table; returns the ratio b/a."""
    base = rows["a_official_style"].get("images_per_second") or float("nan")
    ratio = rows["b_ours"].get("images_per_second", float("nan")) / base
    print(
        f"model FLOPs per training image: {flops / 1e9:.1f} GFLOP, of which the vision tower's forward "
        f"{vision_flops / 1e9:.1f} ({models or 'given models'})"
    )
    print(
        f"{'setting':30s} {'device':7s} {'prec':5s} {'lat':4s} {'vis':4s} {'ckpt':5s} {'batch':>5s} {'images/s':>9s}"
        f" {'x a':>5s} {'peak GiB':>8s} {'TFLOP/s':>8s}"
    )
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:30s} batch {r['batch_size']}: {r['error']}")
            continue
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        print(
            f"{name:30s} {r['device'][:7]:7s} {r['precision']:5s} {str(r['cache_latents'])[0]:4s} "
            f"{str(r['cache_vision_features'])[0]:4s} {str(r['gradient_checkpointing'])[0]:5s} {r['batch_size']:5d} "
            f"{r['images_per_second']:9.1f} {r['images_per_second'] / base:5.2f} {peak:>8s} {r['achieved_tflops']:8.1f}"
        )
    best = max((r for r in rows.values() if "error" not in r), key=lambda r: r["images_per_second"])
    print(
        f"ratio b/a: {ratio:.2f}; best {best['images_per_second']:.1f} images/s"
        f" against the target of {TARGET_PER_GPU} per H200 (images/s after the first step; lat/vis: cached VAE"
        " latents / vision features)"
    )
    return ratio


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    cfg = load_params(args.params)
    if args.batch_size:
        cfg["batch_size"] = args.batch_size
    runs = planned_runs(cfg, args.large_batch, args.tuned)
    with tempfile.TemporaryDirectory() as tmp:
        if args.paper_sized:
            *inputs, side = paper_sized_inputs(Path(tmp), args.paper_sized, args.n_images, args.models)
            cfg["image_size"] = side
        elif None in (args.images, args.subset, args.vision, args.decoder):
            raise SystemExit("give --images, --subset, --vision and --decoder, or --paper-sized")
        else:
            inputs = [args.images, args.subset, args.vision, args.decoder]
        flops = step_flops(cfg, inputs[2], inputs[3], min(cfg["batch_size"], 4))
        rows = {
            name: run_setting(cfg, over, batch, args.steps, inputs, Path(tmp), name, flops)
            for name, over, batch in runs
        }
    ratio = print_table(rows, *flops, args.paper_sized)
    if args.out:
        report = {
            "settings": rows,
            "ratio_b_over_a": ratio,
            "gflops_per_image": flops[0] / 1e9,
            "vision_forward_gflops_per_image": flops[1] / 1e9,
            "target_images_per_second_per_h200": TARGET_PER_GPU,
            "models": args.paper_sized,
        }
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
