"""Stage-2 training speed at the paper's sizes, random weights: the configured setting against others.

Builds random-weight folders of the paper profile's stage-2 classes (``vlv.models.paper_sized``:
a VLV encoder around Florence-2-large, the OpenCLIP-H text tower, Qwen2.5-3B as the caption LM;
``--paper-sized tiny`` for tests), Shapes images and teacher-length captions (Shapes captions joined
until they reach ``max_caption_tokens``: every sample is as long as stage 2 allows, the slowest
case), then runs the real ``vlv.stages.finetune_stage2`` for ``--steps`` steps per setting:

- ``a_config``: the stage-2 params as given (paper: bf16 autocast, gradient checkpointing on, the
  encoder trained too, micro batches of 8 accumulated to the global batch);
- ``b_no_checkpointing``: the same without gradient checkpointing, micro batch ``--micro-b``;
- with ``--fsdp CONFIG`` also ``c_fsdp``: ``a_config`` launched through that accelerate config
  (``config/accelerate/fsdp.yaml``) as one process, which on a GPU runs the sharded code path (the
  full-state gathers of the checkpoint and the saved folder) at paper size.

Reports samples/s and tokens/s after the first step (start-up left out), peak memory on CUDA and
the achieved model FLOP/s (FLOPs of one sample's forward and backward counted with
``torch.utils.flop_counter``, no recomputation). Captioning speed (beam search) is
``vlv.bench.stage2``.

Example (a GPU):
    python -m vlv.bench.stage2_training \
        --params "$(python -m vlv.config stage2 --configfile config.yaml config/paper.yaml)" \
        --paper-sized paper --models /tmp/paper_models --steps 4 --out stage2_train_speed.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from vlv.bench.stage1 import free_device_memory, run_stage, steady_rate, write_report, write_shapes_images
from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.stages import finetune_stage2


def long_captions(tokenizer, n: int, min_tokens: int, seed: int = 0) -> list[str]:
    """``n`` captions of at least ``min_tokens`` tokens: Shapes scene captions joined."""
    from vlv.shapes.captions import teacher_caption
    from vlv.shapes.world import WorldSpec, sample_scenes

    spec = WorldSpec()
    scenes = iter(sample_scenes(spec, seed + 1, 100 * n + 1000))
    out = []
    for _ in range(n):
        parts: list[str] = []
        while len(tokenizer(" ".join(parts))["input_ids"]) < min_tokens:
            parts.append(teacher_caption(next(scenes), spec))
        out.append(" ".join(parts))
    return out


def inputs(tmp: Path, preset: str, n_images: int, models: str | None, max_tokens: int):
    """(encoder, t2i, llm, images folder, captions JSONL) for the benchmark."""
    from transformers import AutoTokenizer

    from vlv.models.paper_sized import build_stage2_stack

    encoder, t2i, llm, side = build_stage2_stack(Path(models) if models else tmp / "models", preset)
    keys = write_shapes_images(tmp / "images", side, n_images)
    texts = long_captions(AutoTokenizer.from_pretrained(llm), n_images, max_tokens)
    captions = tmp / "captions.jsonl"
    captions.write_text("".join(json.dumps({"key": k, "caption": t}) + "\n" for k, t in zip(keys, texts)))
    return str(encoder), str(t2i), str(llm), str(tmp / "images"), str(captions)


def sample_flops(cfg: dict, encoder: str, t2i: str, llm: str, images: str, captions: str) -> tuple[float, int]:
    """Model FLOPs of one sample's training forward and backward, and its tokens (prefix + caption)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vlv.data.shards import iter_batches

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cap = finetune_stage2.build({**cfg, "gradient_checkpointing": False}, "vlv", encoder, t2i, llm).to(device)
    _, first, _ = next(iter_batches(images, 1))
    text = json.loads(Path(captions).read_text().splitlines()[0])["caption"]
    batch = {
        k: v.to(device) for k, v in cap.pad([cap.tokenize([text], cfg["max_caption_tokens"])["input_ids"][0]]).items()
    }
    pv = cap.encoder.preprocess(first).to(device)
    with FlopCounterMode(display=False) as counter:
        cap(pixel_values=pv, **batch).backward()
    tokens = cap.encoder.config["num_queries"] + batch["input_ids"].shape[1]
    del cap
    free_device_memory()  # for the stages' own processes
    return float(counter.get_total_flops()), tokens


def _parser():
    p = stage_parser(__doc__)
    p.add_argument("--paper-sized", choices=["paper", "tiny"], required=True)
    p.add_argument("--models", default=None, help="build the folders here, or reuse the stage-1 ones there")
    p.add_argument("--n-images", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--micro-b", type=int, default=16, help="micro batch of b_no_checkpointing")
    p.add_argument("--workers", type=int, default=0, help="loader workers per process")
    p.add_argument("--route", default=None, help="override the params' stage-1 route")
    p.add_argument("--fsdp", default=None, metavar="CONFIG", help="also run a_config through this accelerate config")
    p.add_argument("--out", default=None)
    return p


def run_setting(name: str, params: dict, args, folders: tuple, tmp: Path, flops: float, tokens: int) -> dict:
    """One setting trained by stage 2 itself (through ``--fsdp``'s config for c_fsdp): its row."""
    encoder, t2i, llm, images, captions = folders
    out = tmp / name
    argv = ["--params", json.dumps(params), "--init", "vlv", "--encoder", encoder, "--t2i", t2i, "--llm", llm,
            "--images", images, "--captions", captions, "--out", str(out), "--work", str(tmp / f"w_{name}"),
            "--workers", str(args.workers)]  # fmt: skip
    error = run_stage("vlv.stages.finetune_stage2", argv, args.fsdp if name == "c_fsdp" else None)
    if error:  # e.g. too large for this device: say so, go on
        return {"micro_batch_size": params["micro_batch_size"], "error": error}
    man = json.loads((out / "manifest.json").read_text())
    rate = steady_rate(out / "loss.csv", params["batch_size"])
    return {
        "distributed_type": man.get("distributed_type"),
        "precision": params["precision"],
        "gradient_checkpointing": params["gradient_checkpointing"],
        "trainable": params["trainable"],
        "batch_size": params["batch_size"],
        "micro_batch_size": params["micro_batch_size"],
        "steps": args.steps,
        "device": man["device"],
        "samples_per_second": None if rate is None else round(rate, 2),
        "tokens_per_second": None if rate is None else round(rate * tokens),
        "peak_memory_gib": man.get("peak_memory_gib"),
        "achieved_tflops": None if rate is None else round(flops * rate / 1e12, 1),
    }


def print_table(rows: dict, flops: float, tokens: int) -> None:
    print(f"model FLOPs per training sample: {flops / 1e12:.2f} TFLOP ({tokens} tokens: prefix + caption)")
    print(f"{'setting':20s} {'device':7s} {'prec':5s} {'ckpt':5s} {'batch':>5s} {'micro':>5s} {'samples/s':>9s} "
          f"{'tokens/s':>9s} {'peak GiB':>8s} {'TFLOP/s':>8s}")  # fmt: skip
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:20s} micro batch {r['micro_batch_size']}: {r['error']}")
            continue
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        sps = "-" if r["samples_per_second"] is None else f"{r['samples_per_second']:.2f}"
        print(
            f"{name:20s} {r['device'][:7]:7s} {r['precision']:5s} {str(r['gradient_checkpointing'])[0]:5s} "
            f"{r['batch_size']:5d} {str(r['micro_batch_size']):>5s} {sps:>9s} {str(r['tokens_per_second']):>9s} "
            f"{peak:>8s} {str(r['achieved_tflops']):>8s}"
        )


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    cfg = load_params(args.params)  # `vlv config stage2` gives stage 2's with what it inherits from stage 1
    if args.route:
        cfg["route"] = args.route
    runs = {
        "a_config": {},
        "b_no_checkpointing": {"gradient_checkpointing": False, "micro_batch_size": args.micro_b},
    }
    if args.fsdp:
        runs["c_fsdp"] = {}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = inputs(Path(tmp), args.paper_sized, args.n_images, args.models, cfg["max_caption_tokens"])
        flops, tokens = sample_flops(cfg, *folders)
        for name, over in runs.items():
            # c_fsdp checkpoints once, halfway: the gather of the whole trainable state is part of the path
            every = max(1, args.steps // 2) if name == "c_fsdp" else 10**9
            params = {**cfg, **over, "steps": args.steps, "warmup_steps": 0, "checkpoint_every": every, "log_every": 1}
            rows[name] = run_setting(name, params, args, folders, Path(tmp), flops, tokens)
    print_table(rows, flops, tokens)
    if args.out:
        report = {
            "settings": rows,
            "tflops_per_sample": flops / 1e12,
            "tokens_per_sample": tokens,
            "models": args.paper_sized,
        }
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
