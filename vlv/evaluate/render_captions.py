"""Render a captioner's captions with the evaluation renderer (caption -> image, the paper's Table 1).

Every caption is rendered at each guidance scale of ``evaluation.renderer_guidance`` with a fixed
seed per image (the same noise for every captioner, so captioners differ only by their words).
Toy profile: the committed toy renderer (a second, independently trained Stable-Diffusion-format
pipeline); paper profile: the configured renderer id. Captions longer than the renderer's text
encoder (77 CLIP tokens) are truncated by it; how many were is recorded in the manifest.

Outputs: ``--out FILE.tar`` with ``<key>-cfg<g>.png`` per image and guidance, and
``FILE.manifest.json``.

Example:
    python -m vlv.evaluate.render_captions --params "$(python -m vlv.config evaluation)" --renderer models/toy/renderer \
        --captions results/caption/vlv_pairs100.jsonl --out results/render_captions/vlv_pairs100.tar
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.data.shards import encode_png, write_shard
from vlv.manifest import build_manifest, write_manifest
from vlv.training import pick_device


def render_key(key: str, guidance: float) -> str:
    return f"{key}-cfg{guidance:g}".replace(".", "p")


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    p.add_argument("--renderer", required=True)
    p.add_argument("--captions", required=True, help="JSONL of {key, caption}")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    log = setup_logging()
    cfg = load_params(args.params)
    rows = [json.loads(line) for line in Path(args.captions).read_text().splitlines() if line.strip()]
    rows = rows[: cfg["n_images"]]
    if not rows:
        raise SystemExit(f"no captions in {args.captions}")
    # imported here, not at the top: evaluate_fid imports render_key and needs no diffusers
    from diffusers.utils import logging as diffusers_logging

    from vlv.models.t2i import iter_renders, load_t2i_pipeline

    diffusers_logging.set_verbosity_error()  # truncation is counted below, not logged per batch
    device = pick_device(args.device)
    pipe = load_t2i_pipeline(args.renderer, device)
    tok = pipe.tokenizer
    truncated = sum(len(tok(r["caption"]).input_ids) > tok.model_max_length for r in rows)
    captions = [r["caption"] for r in rows]
    guidances = cfg["renderer_guidance"]

    def samples():  # rendered a batch at a time and written as they come: one batch in memory
        for g in tqdm(guidances, desc="guidance scales"):
            for start, batch in iter_renders(pipe, captions, g, cfg["renderer_steps"], cfg["seed"]):
                for i, image in enumerate(batch):
                    yield render_key(rows[start + i]["key"], g), {"png": encode_png(image)}

    t0 = time.time()
    out = Path(args.out)
    write_shard(out, samples())  # to a temporary name, renamed when complete
    seconds = time.time() - t0
    write_manifest(
        out.with_suffix(".manifest.json"),
        build_manifest(
            "render_captions",
            cfg,
            cfg["seed"],
            device=str(device),
            renderer=args.renderer,
            captions=args.captions,
            images=len(rows),
            captions_truncated_by_renderer=truncated,
            seconds=round(seconds, 1),
        ),
    )
    log.info("rendered %d captions at %d guidance scales in %.0f s", len(rows), len(guidances), seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
