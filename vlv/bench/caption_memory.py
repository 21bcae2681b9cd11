"""Peak memory of ``vlv caption`` on a folder of photo-sized images: 200 against 2 000 (or any sizes).

``vlv caption`` decodes and captions ``--batch-size`` images at a time and writes each batch as it
is done, so its peak memory should not grow with the number of inputs (the issue's bound: 2 000
images within 1.5 times the peak of 200). Each size runs the real command as its own process on a
folder of JPEGs of ``--side`` px (random pictures; what a folder of phone photos costs to decode),
and its peak resident memory is read from the kernel's record of that process (``os.wait4``). With
``--out`` the figures go to a JSON report with the machine, date and revision.

By default the captioner is built untrained from the committed toy stand-ins (memory does not depend
on the weights); ``--captioner`` takes a trained ``finetune_stage2`` folder instead.

Example:
    python -m vlv.bench.caption_memory --sizes 200 2000 --out results/figures/caption_memory_cpu.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vlv.config import ROOT

BOUND = 1.5  # the issue's: peak RSS for 2 000 images within 1.5x that for 200


def write_photos(folder: Path, n: int, side: int, seed: int = 0) -> None:
    """``n`` JPEGs of ``side`` x ``side`` px: smooth random pictures (JPEG-sized like photos)."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC).save(folder / f"photo {i:05d}.jpg")


def build_captioner(out: Path) -> Path:
    """An untrained VLV captioner of the toy stand-ins' classes and sizes, saved in ``out``."""
    import torch

    from vlv.models.vlv_captioner import VLVCaptioner

    torch.manual_seed(0)
    toy = ROOT / "models" / "toy"
    cap = VLVCaptioner.build(str(toy / "vision"), str(toy / "t2i"), str(toy / "lm"), "text_encoder", 8)
    cap.save_pretrained(out)
    return out


def peak_rss_mib(cmd: list[str]) -> tuple[float, float, int]:
    """Run ``cmd``; its peak resident memory in MiB (the kernel's maximum for that process), its
    seconds and its exit status."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024, time.time() - t0, os.waitstatus_to_exitcode(status)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    p.add_argument("--side", type=int, default=512, help="image side in px")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--captioner", default=None, help="a finetune_stage2 folder (default: untrained toy classes)")
    p.add_argument("--out", default=None, help="optional JSON report")
    args = p.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        captioner = args.captioner or str(build_captioner(tmp / "captioner"))
        for n in args.sizes:
            folder = tmp / f"photos_{n}"
            write_photos(folder, n, args.side)
            out = tmp / f"captions_{n}.jsonl"
            cmd = [sys.executable, "-m", "vlv.cli", "caption", "--captioner", captioner, "--batch-size",
                   str(args.batch_size), "--max-new-tokens", "8", "--out", str(out), str(folder)]  # fmt: skip
            peak, seconds, code = peak_rss_mib(cmd)
            lines = len(out.read_text().splitlines()) if out.exists() else 0
            rows[str(n)] = {"images": n, "peak_rss_mib": round(peak, 1), "seconds": round(seconds, 1),
                            "captions": lines, "exit": code}  # fmt: skip
            print(
                f"{n:6d} images of {args.side} px: peak {peak:7.1f} MiB, {seconds:6.1f} s, {lines} captions, exit {code}"
            )
    first, last = rows[str(args.sizes[0])], rows[str(args.sizes[-1])]
    ratio = last["peak_rss_mib"] / first["peak_rss_mib"]
    print(f"peak for {args.sizes[-1]} / peak for {args.sizes[0]}: {ratio:.2f} (bound {BOUND})")
    if args.out:
        from vlv.bench.stage1 import write_report

        report = {"sizes": rows, "ratio_last_over_first": ratio, "bound": BOUND, "side": args.side,
                  "batch_size": args.batch_size, "captioner": args.captioner or "untrained toy classes"}  # fmt: skip
        write_report(args.out, report)
    return 0 if all(r["exit"] == 0 and r["captions"] == r["images"] for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
