"""Captions for the evaluation split from one captioner, batched, as JSONL (``{"key", "caption"}``).

Captioners (``--captioner``): ``reference`` (the split's first reference caption), ``teacher``
(the stage-2 teacher of the ``teacher`` config section: the Shapes oracle in the toy profile),
``vlv`` (a trained VLV captioner folder, ``--model``; the VLV and no-stage-1 captioners are both
this kind) and ``vlm`` (an open VLM through transformers, ``--model`` a hub id or folder). All share
the interface in ``vlv.models.captioners``. A manifest beside the output records the settings and the
measured captions per second.

Example:
    python -m vlv.stages.caption --params "$(python -m vlv.config stage2)" --teacher "$(python -m vlv.config teacher)" \
        --captioner vlv --model results/finetune_stage2/vlv_pairs100 \
        --images results/generate_shapes/eval --out results/caption/vlv_pairs100.jsonl
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.data.shards import ShardIndex, iter_batches
from vlv.manifest import build_manifest, write_manifest
from vlv.models.captioners import PAPER_PROMPT, LocalVLM, References, VLVCaptionerBackend, make_teacher
from vlv.training import pick_device

# Images decoded at once (at 512 px about 0.8 GB), rounded up to whole captioner batches.
CHUNK_IMAGES = 1024

KINDS = ("reference", "teacher", "vlv", "vlm")


def make_captioner(kind: str, cfg: dict, teacher_cfg: dict, model: str | None, shapes: dict | None, device):
    if kind in ("vlv", "vlm") and not model:
        raise SystemExit(f"--captioner {kind} needs --model")
    if kind == "reference":
        return References()
    if kind == "teacher":
        return make_teacher({**teacher_cfg, "batch_size": cfg["caption_batch_size"]}, shapes, device)
    if kind == "vlv":
        return VLVCaptionerBackend(model, cfg["num_beams"], cfg["max_new_tokens"], device, cfg["caption_batch_size"])
    return LocalVLM(
        model,
        teacher_cfg["prompt"] or PAPER_PROMPT,
        cfg["max_new_tokens"],
        device,
        batch_size=cfg["caption_batch_size"],
    )


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    p.add_argument("--teacher", default=None, help="the teacher config section as JSON (for --captioner teacher)")
    p.add_argument("--captioner", required=True, choices=KINDS)
    p.add_argument("--model", default=None)
    p.add_argument("--images", required=True)
    p.add_argument("--n-images", type=int, default=None, help="caption only the first N images")
    p.add_argument("--shapes", default=None, help="the Shapes world config as JSON (toy profile)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    log = setup_logging()
    cfg = load_params(args.params)
    teacher_cfg = load_params(args.teacher) if args.teacher else None
    if args.captioner == "teacher" and teacher_cfg is None:
        raise SystemExit("--captioner teacher needs --teacher")
    device = pick_device(args.device)
    total = len(ShardIndex(args.images))  # from the tar headers; the images are streamed below
    if args.n_images is not None:
        total = min(total, args.n_images)
    shapes = json.loads(args.shapes) if args.shapes else None
    captioner = make_captioner(args.captioner, cfg, teacher_cfg or {}, args.model, shapes, device)
    # chunks of whole captioner batches: the same batches, so the same captions, as one call on all
    per_batch = int(getattr(captioner, "batch_size", 1))
    chunk = per_batch * max(1, -(-CHUNK_IMAGES // per_batch))
    keys: list[str] = []
    captions: list[str] = []
    t0 = time.time()
    bar = tqdm(total=total, desc=f"caption {args.captioner}", unit="img", mininterval=5)
    for chunk_keys, images, metas in iter_batches(args.images, chunk):
        take = total - len(keys)
        if take <= 0:
            break
        captions += captioner.caption(images[:take], metas[:take])
        keys += chunk_keys[:take]
        bar.update(min(take, len(chunk_keys)))
    bar.close()
    seconds = time.time() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w") as f:
        for k, c in zip(keys, captions, strict=True):
            f.write(json.dumps({"key": k, "caption": c}) + "\n")
    tmp.replace(out)
    write_manifest(
        out.with_suffix(".manifest.json"),
        build_manifest(
            "caption",
            cfg,
            None,
            device=str(device),
            captioner=args.captioner,
            model=args.model or getattr(captioner, "name", args.captioner),
            images=len(keys),
            seconds=round(seconds, 2),
            captions_per_second=round(len(keys) / max(seconds, 1e-9), 2),
        ),
    )
    log.info("%d captions from %s in %.1f s -> %s", len(keys), args.captioner, seconds, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
