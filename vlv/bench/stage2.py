"""Caption throughput: batched beam search against one image at a time (the official code's loop).

Both use the same captioner folder, images, beam width and length limit; the script checks the
two give the same captions (beam search is per image, so batching must not change them; any
difference is counted and printed) and prints captions/s for each and the ratio.

Example (toy profile, on this CPU):
    python -m vlv.bench.stage2 --captioner results/finetune_stage2/vlv_pairs100 \
        --images results/generate_shapes/eval --n-images 64 --out results/figures/stage2_caption_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vlv.data.shards import load_images
from vlv.manifest import build_manifest, write_manifest
from vlv.models.vlv_captioner import VLVCaptioner
from vlv.training import pick_device


def timed_captions(model: VLVCaptioner, images, batch: int, device, num_beams: int, max_new_tokens: int):
    captions: list[str] = []
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        part = images[i : i + batch]
        pv = model.encoder.preprocess(part).to(device)
        captions += model.generate(pv, num_beams=num_beams, max_new_tokens=max_new_tokens, images=part)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return captions, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--captioner", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    model = VLVCaptioner.from_pretrained(args.captioner).to(device)
    _, images, _ = load_images(args.images)
    images = images[: args.n_images]
    timed_captions(model, images[:2], 2, device, args.num_beams, 8)  # warm-up
    one, s_one = timed_captions(model, images, 1, device, args.num_beams, args.max_new_tokens)
    batched, s_batch = timed_captions(model, images, args.batch_size, device, args.num_beams, args.max_new_tokens)
    rows = {
        "one_at_a_time": {"batch": 1, "seconds": round(s_one, 3), "captions_per_s": round(len(images) / s_one, 2)},
        "batched": {
            "batch": args.batch_size,
            "seconds": round(s_batch, 3),
            "captions_per_s": round(len(images) / s_batch, 2),
        },
    }
    differ = sum(a != b for a, b in zip(one, batched))
    result = {
        "images": len(images),
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
        "settings": rows,
        "speedup_batched_over_one": round(s_one / s_batch, 2),
        "captions_that_differ": differ,
    }
    if args.out:
        write_manifest(
            Path(args.out), build_manifest("benchmark_stage2", vars(args), None, device=str(device), **result)
        )
    print(f"{'setting':<16}{'batch':>6}{'seconds':>10}{'captions/s':>12}")
    for name, r in rows.items():
        print(f"{name:<16}{r['batch']:>6}{r['seconds']:>10.2f}{r['captions_per_s']:>12.2f}")
    print(f"batched / one-at-a-time: {result['speedup_batched_over_one']:.2f}x; captions that differ: {differ}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
