"""Teacher captioning throughput: the paper profile's local VLM teacher (the class and size of
Qwen2.5-VL-7B-Instruct, random weights) captioning images the way ``synthesize_captions`` runs it
(``LocalVLM``, the paper's prompt, batched greedy decoding, bf16 on a GPU).

Random weights would stop at any token, so every caption is held to exactly ``--max-new-tokens``
(the config's 300) by setting the generation's ``min_new_tokens`` to it: the figure is the cost of
captions of that length, an upper bound for real ones, which stop earlier. Images are Shapes scenes
rendered at ``--image-size`` (the paper profile's 512 px: 18 x 18 merged tokens, 324 per image); the
prompt is the paper's, tokenized by the toy tokenizer (no Qwen tokenizer offline), which makes it
longer than Qwen's would (about 400 tokens against roughly 100), so the prefill is overcounted.
The first batch is a warm-up and is not timed. Prints images/s, generated tokens/s, peak memory and
the device-hours the paper profile's teacher captions (``data.pairs``, 6M) would take at that rate.

Examples:
    # the paper's size, on a GPU (builds a 16.6 GB bf16 folder under --models first, or reuses it)
    python -m vlv.bench.teacher --paper-sized paper --models /tmp/vlv_models --n-images 80 --batch-size 16 \\
        --out results/figures/teacher_speed_h200.json
    # the same path at toy size (tests)
    python -m vlv.bench.teacher --paper-sized tiny --n-images 6 --batch-size 3 --max-new-tokens 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vlv.bench.stage1 import write_report
from vlv.models.captioners import PAPER_PROMPT, LocalVLM
from vlv.models.paper_sized import TOY_LM, build_qwen25vl
from vlv.shapes.world import WorldSpec, render_array, sample_scenes
from vlv.training import pick_device


def paper_pairs() -> int:
    """The paper profile's ``data.pairs``: the stage-2 images, each captioned once by the teacher."""
    from vlv.config import ROOT, load_config

    return int(load_config(ROOT / "config.yaml", ROOT / "config" / "paper.yaml")["data"]["pairs"])


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paper-sized", choices=["paper", "tiny"], required=True, help="random-weight teacher size")
    p.add_argument("--models", default=None, help="build the teacher folder here, or reuse it from there")
    p.add_argument("--n-images", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=16, help="the paper profile's teacher.batch_size")
    p.add_argument("--max-new-tokens", type=int, default=300, help="the paper profile's teacher.max_new_tokens")
    p.add_argument("--image-size", type=int, default=None, help="default: 512 (paper), 32 (tiny)")
    p.add_argument("--pairs", type=int, default=None, help="captions to project to (default: the paper profile's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="optional JSON report")
    return p


def timed_captions(args, device, side: int) -> tuple[LocalVLM, list[str], int, int, float]:
    """The teacher built (or reused) and timed on Shapes images after a warm-up batch: (the VLM, the
    timed captions, how many images were timed, prompt tokens per image, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.models or tmp) / f"qwen25vl_{args.paper_sized}"
        if not (folder / "config.json").exists():
            t0 = time.perf_counter()
            build_qwen25vl(TOY_LM, folder, args.paper_sized, device="cuda" if device.type == "cuda" else "cpu")
            print(f"built {folder} in {time.perf_counter() - t0:.0f} s")
        vlm = LocalVLM(str(folder), PAPER_PROMPT, args.max_new_tokens, device, batch_size=args.batch_size)
        vlm.model.generation_config.min_new_tokens = args.max_new_tokens  # every caption full length
        spec = WorldSpec(image_size=side)
        images = render_array(sample_scenes(spec, 0, args.n_images), spec)
        prompt_tokens = int(
            vlm.processor(text=[vlm._text(PAPER_PROMPT)], images=[images[0]], return_tensors="pt")["input_ids"].shape[1]
        )
        vlm.caption(images[: args.batch_size])  # warm-up: kernel selection, allocator growth
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        timed = images[args.batch_size :]
        t0 = time.perf_counter()
        captions = vlm.caption(timed)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return vlm, captions, len(timed), prompt_tokens, time.perf_counter() - t0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.n_images < 2 * args.batch_size:
        raise SystemExit("--n-images must hold at least two batches (the first is a warm-up)")
    device = pick_device(args.device)
    side = args.image_size or (512 if args.paper_sized == "paper" else 32)
    vlm, captions, n_timed, prompt_tokens, seconds = timed_captions(args, device, side)
    rate = n_timed / seconds
    tokens = n_timed * args.max_new_tokens / seconds
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    pairs = args.pairs or paper_pairs()
    hours = pairs / rate / 3600
    row = {
        "model": f"Qwen2_5_VLForConditionalGeneration ({args.paper_sized}, random weights)",
        "parameters": sum(x.numel() for x in vlm.model.parameters()),
        "device": str(device),
        "dtype": str(vlm.dtype),
        "image_size": side,
        "prompt_tokens_per_image": prompt_tokens,
        "new_tokens_per_caption": args.max_new_tokens,
        "batch_size": args.batch_size,
        "images_timed": n_timed,
        "seconds": round(seconds, 2),
        "images_per_second": round(rate, 3),
        "generated_tokens_per_second": round(tokens, 1),
        "peak_memory_gib": round(peak, 2) if peak is not None else None,
        "captions_projected": pairs,
        "device_hours_for_the_captions": round(hours, 1),
        "empty_captions": sum(not c for c in captions),
    }
    print(
        f"teacher {row['model']}: {row['parameters'] / 1e9:.2f} B parameters, {device}, {vlm.dtype}, {side} px "
        f"({prompt_tokens} prompt tokens), batch {args.batch_size}, {args.max_new_tokens} new tokens per caption"
    )
    print(
        f"{n_timed} images in {seconds:.1f} s: {rate:.2f} images/s, {tokens:.0f} generated tokens/s"
        + (f", peak {peak:.1f} GiB" if peak is not None else "")
        + f"; {pairs:,} teacher captions: {hours:.0f} device-hours at this rate"
    )
    if args.out:
        write_report(args.out, {"teacher": row, "captions_sample": captions[:2]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
