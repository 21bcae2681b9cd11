"""Stage-1 training speed: the official code's setting and ours with each speed switch, side by side, in one process.

Rows, each the real ``vlv.stages.distill_stage1`` run in this process (its own accelerate state, the
device's memory given back between rows) for ``--steps`` steps from the same seed on the same data:

- ``c_cached_b<L>``: ours at the large batch (``--large-batch``, one pass): bf16 where the device has
  it (CUDA; fp32 on a CPU, where bf16 autocast is slower), VAE latents and the frozen vision tower's
  features cached (the features in bf16), no gradient checkpointing: the reference of the rows below;
- ``d_tuned_b<L>``: (c) with the frozen UNet and text encoder stored and run in bf16 (CUDA),
  channels_last and ``cudnn_benchmark``;
- ``e_compiled_b<L>``: (d) with ``torch.compile`` on the UNet, the text encoder and the BART
  encoder/decoder (their compiling falls in the first step, reported apart);
- ``f_uncached_b<L>``: (e) with the vision tower run every step (no feature cache);
- ``a_official_style_b<S>``: fp32, the VAE on every image every step, gradient checkpointing, at the
  small batch (``--batch-size``);
- ``b_ours_b<S>``: ours with cached latents only, at the small batch.

The table gives images/s after the first step (kernel selection, compiling and allocator growth left
out; the whole-run rate is in the JSON), the first step's seconds, peak memory, the achieved model
TFLOP/s, the speed-up over (a), and each row's largest relative difference in loss, step by step, from
its reference row (c for c-f, a for b): the speed switches must not change what is trained. A row
that does not fit in memory in one pass is run again in two. ``--budget-s`` starts no row once that
many seconds have passed (rows are in order of importance).

``--paper-sized paper`` builds random-weight folders of the paper profile's classes at paper size
(Florence-2-large at 768 px, the OpenCLIP-H text tower, the SD-2.1 UNet and VAE at 384 px;
``vlv.models.paper_sized``) and Shapes images at 384 px, so it runs where no weights can be downloaded
(speed does not depend on the weights); model FLOPs of one training step are counted with
``torch.utils.flop_counter`` (a row with cached vision features is credited only the FLOPs it still
does). ``--paper-sized tiny`` is the same path at toy size (tests, dry runs). ``scripts/gpu_benchmarks.sh``
runs it on a GPU. ``--check`` instead runs ``switch_check`` for every switch on the CPU and prints it.

Examples:
    # toy config on this CPU
    python -m vlv.bench.stage1 --params "$(python -m vlv.config stage1)" \
        --images results/generate_shapes/pool --subset results/subset/subset.json \
        --vision models/toy/vision --decoder models/toy/t2i --steps 30
    # each speed switch against the plain path, on the CPU, at tiny size
    python -m vlv.bench.stage1 --params "$(python -m vlv.config stage1)" --paper-sized tiny --check
    # paper-sized, random weights, on a GPU
    python -m vlv.bench.stage1 --params "$(python -m vlv.config stage1 --configfile config.yaml config/paper.yaml)" \
        --paper-sized paper --batch-size 32 --large-batch 128 --steps 10 --out results/figures/stage1_speed_h200.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.stages import distill_stage1

CUDA = torch.cuda.is_available()
MIXED = "bf16" if CUDA else "fp32"  # bf16 autocast is slower than fp32 on a CPU
CACHED = {
    "precision": MIXED,
    "cache_latents": True,
    "cache_vision_features": True,
    "gradient_checkpointing": False,
}
TUNED = {**CACHED, "frozen_bf16": CUDA, "channels_last": True, "cudnn_benchmark": True}
COMPILED = {**TUNED, "compile": list(distill_stage1.COMPILABLE)}
# letter -> (name, the settings it changes, "large" or "small" batch, the row its losses are compared with)
ROWS = {
    "c": ("c_cached", CACHED, "large", None),
    "d": ("d_tuned", TUNED, "large", "c"),
    "e": ("e_compiled", COMPILED, "large", "c"),
    "f": ("f_uncached", {**COMPILED, "cache_vision_features": False}, "large", "c"),
    "a": (
        "a_official_style",
        {"precision": "fp32", "cache_latents": False, "cache_vision_features": False, "gradient_checkpointing": True},
        "small",
        None,
    ),
    "b": ("b_ours", {**CACHED, "cache_vision_features": False}, "small", "a"),
}
SPEED_KEYS = {"frozen_bf16": False, "channels_last": False, "compile": [], "cudnn_benchmark": False}
TARGET_PER_GPU = 210  # images/s per H200 with cached features (the GPU-speed issue: half the chip's limit)
LOSS_TOLERANCE = 0.02  # largest relative loss difference from the reference row that counts as rounding


def loss_rows(loss_csv: Path) -> list[dict]:
    """The rows of a stage's loss.csv (step, loss, lr, seconds)."""
    import csv

    with loss_csv.open() as f:
        return list(csv.DictReader(f))


def steady_rate(loss_csv: Path, batch: int) -> float | None:
    """Images/s after the first logged step (log_every 1), so start-up work (kernel selection,
    allocator growth, the loader's first batch) is left out; None with fewer than two rows."""
    rows = loss_rows(loss_csv)
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
    p.add_argument("--batch-size", type=int, default=None, help="the small batch (default: stage1.batch_size)")
    p.add_argument("--large-batch", type=int, default=None, help="the large batch (default: the small one)")
    p.add_argument("--rows", default="cdefab", help="which rows, by letter, in this order (default: cdefab)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--budget-s", type=float, default=None, help="start no row after this many seconds")
    p.add_argument("--check", action="store_true", help="run switch_check for each switch instead (a CPU check)")
    p.add_argument("--out", default=None, help="optional JSON report")
    return p


def planned_runs(rows: str, small: int, large: int) -> list[tuple[str, str, dict, int, str | None]]:
    """(letter, name, the settings it changes, batch size, reference letter) of each row asked for."""
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"--rows: no row {sorted(unknown)}; rows are {''.join(ROWS)}")
    runs = []
    for letter in rows:
        name, over, size, ref = ROWS[letter]
        batch = large if size == "large" else small
        runs.append((letter, f"{name}_b{batch}", over, batch, ref if ref and ref in rows else None))
    return runs


def run_in_process(argv: list[str]) -> str | None:
    """``distill_stage1.main(argv)`` in this process, with accelerate's process-wide state and the
    device's memory (and its peak) reset around it; None when it succeeded, else what stopped it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    free_device_memory()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    try:
        distill_stage1.main(argv)
        return None
    except (Exception, SystemExit) as e:  # e.g. out of memory: the row says so and the others go on
        return f"{type(e).__name__}: {str(e)[-400:]}"
    finally:
        AcceleratorState._reset_state(True)
        torch._dynamo.reset()  # compiled graphs of this row's modules
        free_device_memory()


def run_setting(cfg: dict, over: dict, batch: int, steps: int, inputs: tuple, tmp: Path, name: str, flops) -> dict:
    """One setting trained by the stage itself for ``steps`` steps: its row of the report. A large batch
    that does not fit in one pass is run again in two."""
    images, subset, vision, decoder = inputs
    params = {
        **cfg,
        **SPEED_KEYS,  # the speed settings only where a row names them
        **over,
        "batch_size": batch,
        "micro_batch_size": None,  # one pass per step
        "noise_draws": 1,  # a training-objective choice, not a speed one: images/s as the paper trains
        "steps": steps,
        "warmup_steps": 1,
        "checkpoint_every": 10**9,
        "log_every": 1,
    }
    out = tmp / name
    for attempt in (1, 2):
        argv = ["--params", json.dumps(params), "--images", images, "--subset", subset, "--vision", vision,
                "--decoder", decoder, "--out", str(out), "--work", str(tmp / f"w_{name}"), "--workers", "2"]  # fmt: skip
        error = run_in_process(argv)
        if not (error and "out of memory" in error.lower() and attempt == 1 and batch > 1):
            break
        params["micro_batch_size"] = batch // 2
    row = {**SPEED_KEYS, **over, "batch_size": batch, "micro_batch_size": params["micro_batch_size"]}
    if error:  # e.g. a setting too large for this device: say so, go on
        return {**row, "error": error}
    man = json.loads((out / "manifest.json").read_text())
    rate = steady_rate(out / "loss.csv", batch) or man["images_per_second"]
    rows = loss_rows(out / "loss.csv")
    total, vision_part = flops
    model_flops = total - (vision_part if over["cache_vision_features"] else 0.0)
    return {
        **row,
        "steps": steps,
        "device": man["device"],
        "images_per_second_whole_run": man["images_per_second"],
        "images_per_second": round(rate, 2),
        "first_step_seconds": round(float(rows[0]["seconds"]), 2),  # start-up, and compiling where asked
        "peak_memory_gib": man.get("peak_memory_gib"),
        "achieved_tflops": round(model_flops * rate / 1e12, 3),
        "losses": [float(r["loss"]) for r in rows],
    }


def compare_losses(rows: dict, runs) -> None:
    """Each row's largest relative loss difference, step by step, from its reference row (in place)."""
    by_letter = {letter: name for letter, name, *_ in runs}
    for _, name, _, _, ref in runs:
        row, base = rows[name], rows.get(by_letter.get(ref))
        if ref is None or "losses" not in row or base is None or "losses" not in base:
            continue
        diff = max(abs(x - y) / abs(y) for x, y in zip(row["losses"], base["losses"], strict=True))
        row.update(reference=by_letter[ref], loss_rel_diff_max=diff, loss_within_tolerance=diff <= LOSS_TOLERANCE)


def print_table(rows: dict, flops: float, vision_flops: float, models: str | None) -> None:
    """The report as a table, the best cached rate against the target last."""
    official = next((r for n, r in rows.items() if n.startswith("a_") and "error" not in r), None)
    base = official["images_per_second"] if official else float("nan")
    print(
        f"model FLOPs per training image: {flops / 1e9:.1f} GFLOP, of which the vision tower's forward "
        f"{vision_flops / 1e9:.1f} ({models or 'given models'})"
    )
    print(
        f"{'setting':24s} {'device':7s} {'prec':5s} {'vis':4s} {'batch':>5s} {'images/s':>9s} {'x a':>5s}"
        f" {'1st s':>6s} {'peak GiB':>8s} {'TFLOP/s':>8s} {'loss diff':>10s}"
    )
    for name, r in rows.items():
        if "error" in r or "skipped" in r:
            print(f"{name:24s} batch {r['batch_size']}: {r.get('error') or r['skipped']}")
            continue
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        diff = f"{r['loss_rel_diff_max']:.1e}" if "loss_rel_diff_max" in r else "ref"
        batch = f"{r['batch_size']}" + ("" if r["micro_batch_size"] is None else f"/{r['micro_batch_size']}")
        print(
            f"{name:24s} {r['device'][:7]:7s} {r['precision']:5s} {str(r['cache_vision_features'])[0]:4s} "
            f"{batch:>5s} {r['images_per_second']:9.1f} {r['images_per_second'] / base:5.2f} "
            f"{r['first_step_seconds']:6.1f} {peak:>8s} {r['achieved_tflops']:8.1f} {diff:>10s}"
        )
    cached = [r for r in rows.values() if "images_per_second" in r and r["cache_vision_features"]]
    best = max((r["images_per_second"] for r in cached), default=float("nan"))
    print(
        f"best with cached features: {best:.1f} images/s against the target of {TARGET_PER_GPU} per H200"
        f" (images/s after the first step; vis: cached vision features; batch N/M: M per pass; loss diff: the"
        f" largest relative difference from the reference row, tolerance {LOSS_TOLERANCE})"
    )


def switch_check(cfg: dict, vision: str, decoder: str, images, switches: dict[str, dict]) -> dict:
    """Each speed switch against the plain path on this device: the loss of one step from the seeded
    initial weights, and the gradient of every trainable weight (what the first update is made of).
    The plain path: ``cfg`` in bf16 autocast, two passes per batch, no speed setting; ``fp32``, the same
    in fp32, is the yardstick of what rounding alone does. Returns, per switch: the loss, its relative
    difference from the plain loss, and the gradient's relative error and cosine against the plain one."""
    from vlv.training import make_accelerator

    plain = {**cfg, **SPEED_KEYS, "precision": "bf16", "cache_vision_features": False}
    plain["micro_batch_size"] = max(1, len(images) // 2)
    runs = {"plain": plain, "fp32": {**plain, "precision": "fp32"}}
    runs.update({name: {**plain, **over} for name, over in switches.items()})
    results = {}
    for name, params in runs.items():
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
        acc = make_accelerator(cpu=not CUDA, precision=params["precision"])
        results[name] = first_step(params, vision, decoder, images, acc)
    AcceleratorState._reset_state(True)
    loss0, grad0 = results["plain"]
    grad32 = results["fp32"][1]
    report = {}
    for name, (loss, grad) in results.items():
        report[name] = {
            "loss": loss,
            "loss_rel_diff": abs(loss - loss0) / abs(loss0),
            "grad_rel_err": float((grad - grad0).norm() / grad0.norm()),
            "grad_cosine": float(torch.nn.functional.cosine_similarity(grad, grad0, dim=0)),
            "grad_rel_err_to_fp32": float((grad - grad32).norm() / grad32.norm()),
        }
    return report


def first_step(params: dict, vision: str, decoder: str, images, acc) -> tuple[float, torch.Tensor]:
    """One stage-1 step's loss and the flattened gradient of the trainable weights, from the seeded
    initial weights, on ``images`` (uint8 NxHxWx3), through the stage's own ``build`` and step loss."""
    from vlv.training import seed_everything, train_mode

    params = {**params, "batch_size": len(images)}
    seed_everything(int(params["seed"]))
    enc, dec = distill_stage1.build(params, vision, decoder, acc.device)
    train_mode(enc.to(acc.device))
    batch = {"images": torch.from_numpy(images), "pixel_values": enc.preprocess(images)}
    if params["cache_vision_features"]:  # as the cache holds them
        with torch.no_grad(), acc.autocast():
            feats = enc.image_features(batch["pixel_values"].to(acc.device))
        batch["vision"] = feats.to(distill_stage1.vision_cache_dtype(params)).cpu()
    loss = distill_stage1.make_step_loss(params, acc, dec)(enc, 0, batch)
    grad = torch.cat([p.grad.float().flatten().cpu() for p in enc.parameters() if p.requires_grad])
    return float(loss), grad


# the switches switch_check compares (each alone, over the plain bf16 path)
SWITCHES = {
    "frozen_bf16": {"frozen_bf16": True},
    "channels_last": {"channels_last": True},
    "one_pass": {"micro_batch_size": None},
    "vision_cache_bf16": {"cache_vision_features": True},
    "compile_text_encoder": {"compile": ["text_encoder"]},
    "compile_language_model": {"compile": ["language_model"]},
    "compile_unet": {"compile": ["unet"]},
}


def print_check(report: dict) -> None:
    print(f"{'switch':24s} {'loss':>9s} {'loss diff':>9s} {'grad err':>9s} {'grad cos':>9s} {'err fp32':>9s}")
    for name, r in report.items():
        print(
            f"{name:24s} {r['loss']:9.5f} {r['loss_rel_diff']:9.1e} {r['grad_rel_err']:9.1e} {r['grad_cosine']:9.5f}"
            f" {r['grad_rel_err_to_fp32']:9.1e}"
        )
    print(
        "against the plain bf16 path (autocast, two passes); fp32: the same in fp32, what rounding alone does;"
        " err fp32: the gradient's relative error against the fp32 one"
    )


def main(argv=None) -> int:
    import time

    t_start = time.time()
    args = _parser().parse_args(argv)
    setup_logging()
    cfg = load_params(args.params)
    small = args.batch_size or cfg["batch_size"]
    runs = planned_runs(args.rows, small, args.large_batch or small)
    with tempfile.TemporaryDirectory() as tmp:
        if args.paper_sized:
            *inputs, side = paper_sized_inputs(Path(tmp), args.paper_sized, args.n_images, args.models)
            cfg["image_size"] = side
        elif None in (args.images, args.subset, args.vision, args.decoder):
            raise SystemExit("give --images, --subset, --vision and --decoder, or --paper-sized")
        else:
            inputs = [args.images, args.subset, args.vision, args.decoder]
        if args.check:
            images = check_images(inputs[0], small)
            report = switch_check(cfg, inputs[2], inputs[3], images, SWITCHES)
            print_check(report)
            if args.out:
                write_report(args.out, {"switch_check": report, "models": args.paper_sized, "batch_size": small})
            return 0
        flops = step_flops(cfg, inputs[2], inputs[3], min(small, 4))
        rows = {}
        for _, name, over, batch, _ in runs:
            if args.budget_s is not None and time.time() - t_start > args.budget_s:
                rows[name] = {**over, "batch_size": batch, "skipped": f"past the budget of {args.budget_s:.0f} s"}
                continue
            rows[name] = run_setting(cfg, over, batch, args.steps, inputs, Path(tmp), name, flops)
    compare_losses(rows, runs)
    print_table(rows, *flops, args.paper_sized)
    if args.out:
        report = {
            "settings": rows,
            "gflops_per_image": flops[0] / 1e9,
            "vision_forward_gflops_per_image": flops[1] / 1e9,
            "target_images_per_second_per_h200": TARGET_PER_GPU,
            "loss_tolerance": LOSS_TOLERANCE,
            "models": args.paper_sized,
            "seconds": round(time.time() - t_start, 1),
        }
        write_report(args.out, report)
    return 0


def check_images(folder: str, n: int):
    """The first ``n`` images of a shard folder, uint8 NxHxWx3."""
    import numpy as np

    from vlv.data.loader import ShardImages
    from vlv.data.shards import ShardIndex

    index = ShardIndex(folder)
    return np.stack([ShardImages(index)[i] for i in range(min(n, len(index)))])


if __name__ == "__main__":
    raise SystemExit(main())
