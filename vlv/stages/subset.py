"""Select the stage-1 image subset: validity checks, CLIP-score ranking, top-N.

Every sample of the input shards is either kept or rejected with a reason: no image member,
undecodable (corrupt or truncated), too small, aspect ratio out of range, or below the top-N CLIP
score. A shard that breaks off mid-file keeps the samples read before the break and records it.
Size and aspect are the original image's when the sample's metadata records it
(``original_width``/``original_height``: img2dataset stores the paper profile's pool resized).
Nothing crashes on bad input. With ``--work`` the results are saved after every shard and a stopped
run goes on from the first shard not done. Scores are the cosine between the CLIP image embedding and the
embedding of ``clip_prompt``.

Inputs: ``--images DIR`` (tar shards), ``--clip DIR`` (a CLIPModel + processor folder).
Outputs: ``--out DIR`` with ``subset.json`` (kept keys with scores, rejected keys with reasons,
counts) and ``manifest.json``.

Example:
    python -m vlv.stages.subset --params "$(python -m vlv.config subset)" \
        --images results/generate_shapes/pool --clip models/toy/clip --out results/subset
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.data.shards import (
    SHARD_ERRORS,
    BadImage,
    check_bad_share,
    decode_image,
    image_bytes,
    iter_shard,
    shard_paths,
)
from vlv.manifest import build_manifest, write_manifest
from vlv.training import fingerprint, pick_device

log = logging.getLogger("vlv.stages.subset")


def _meta(parts: dict[str, bytes]) -> dict:
    try:
        return json.loads(parts["json"]) if "json" in parts else {}
    except ValueError:
        return {}


NO_IMAGE, UNDECODABLE = "no image member in the sample", "undecodable image"
BAD_REASONS = (NO_IMAGE, UNDECODABLE)  # bad files, as against images the filters turn down


def check_image(parts: dict[str, bytes], cfg: dict):
    """(image, None) for a usable image, (None, reason) otherwise."""
    data = image_bytes(parts)
    if data is None:
        return None, NO_IMAGE
    try:
        img = decode_image(data)
    except BadImage as e:
        return None, f"{UNDECODABLE} ({e})"
    w, h = img.size
    meta = _meta(parts)
    if "original_width" in meta and "original_height" in meta:  # stored resized (img2dataset): judge the original
        w, h = int(meta["original_width"]), int(meta["original_height"])
    if min(w, h) < cfg["min_side"]:
        return None, f"too small: {w}x{h}, shorter side below {cfg['min_side']}"
    aspect = w / h
    if not cfg["min_aspect"] <= aspect <= cfg["max_aspect"]:
        return None, f"aspect ratio {aspect:.2f} outside [{cfg['min_aspect']}, {cfg['max_aspect']}]"
    return img, None


class ClipScorer:
    def __init__(self, path: str, prompt: str, device):
        from transformers import AutoProcessor, CLIPModel

        from vlv.models.hub import require_local

        self.name = str(path)
        path = require_local(path, "CLIP model")
        self.model = CLIPModel.from_pretrained(path).to(device).eval()
        self.proc = AutoProcessor.from_pretrained(path)
        self.device = device
        with torch.no_grad():
            tok = self.proc(text=[prompt], return_tensors="pt", padding=True, truncation=True)
            t = self.model.get_text_features(**{k: v.to(device) for k, v in tok.items()})
            self.text = torch.nn.functional.normalize(getattr(t, "pooler_output", t), dim=-1)

    @torch.no_grad()
    def __call__(self, images) -> np.ndarray:
        px = self.proc(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        f = self.model.get_image_features(pixel_values=px)
        f = torch.nn.functional.normalize(getattr(f, "pooler_output", f), dim=-1)
        return (f @ self.text.T).squeeze(-1).float().cpu().numpy()


def save_state(state_file: Path, state: dict) -> None:
    """The selection so far, written whole (a stop mid-write leaves the previous state)."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(state_file)


def select(images_dir: str, cfg: dict, scorer, work: str | None = None) -> dict:
    """Keep or reject every sample. Images are scored in batches of ``batch_size`` that end with each
    shard; with ``work``, the results so far are saved after every shard and a rerun (same settings,
    same shards) goes on from the first shard not done."""
    kept, rejected, broken_shards = [], [], []
    batch, batch_meta = [], []

    def flush():
        if batch:
            for meta, s in zip(batch_meta, scorer(batch), strict=True):
                kept.append({**meta, "clip_score": round(float(s), 6)})
            batch.clear()
            batch_meta.clear()

    shards = shard_paths(images_dir)
    if not shards:
        raise SystemExit(f"no shard-*.tar files in {images_dir}")
    state_file = Path(work) / "state.json" if work else None
    scorer_id = getattr(scorer, "name", type(scorer).__name__)
    fp = fingerprint({"cfg": cfg, "scorer": scorer_id, "shards": [(p.name, p.stat().st_size) for p in shards]})
    done = 0
    if state_file is not None and state_file.exists():
        state = json.loads(state_file.read_text())
        if state["fingerprint"] == fp:
            done = state["shards_done"]
            kept, rejected, broken_shards = state["kept"], state["rejected"], state["broken_shards"]
            log.info("resuming after %d of %d shards (%s)", done, len(shards), state_file)
    bar = tqdm(desc="subset", unit="img", mininterval=5)
    for i, shard in enumerate(shards[done:], start=done):
        n_read = 0
        try:
            for key, parts in iter_shard(shard, strict=True):
                n_read += 1
                bar.update()
                img, reason = check_image(parts, cfg)
                if reason is not None:
                    rejected.append({"key": key, "shard": shard.name, "reason": reason})
                    continue
                batch.append(img)
                batch_meta.append({"key": key, "shard": shard.name})
                if len(batch) >= cfg["batch_size"]:
                    flush()
        except SHARD_ERRORS as e:
            broken_shards.append({"shard": shard.name, "samples_read": n_read, "error": f"{type(e).__name__}: {e}"})
        flush()
        if state_file is not None:
            save_state(state_file, {"fingerprint": fp, "shards_done": i + 1, "kept": kept, "rejected": rejected,
                                    "broken_shards": broken_shards})  # fmt: skip
    bar.close()
    return ranked(kept, rejected, broken_shards, cfg["top_n"])


def ranked(kept: list[dict], rejected: list[dict], broken_shards: list[dict], top_n: int | None) -> dict:
    """The selection: the kept samples by CLIP score (ties by key), the best ``top_n`` kept and the rest
    rejected with their rank, each kept sample's rank, and the counts by reason."""
    kept.sort(key=lambda r: (-r["clip_score"], r["key"]))
    if top_n is not None and len(kept) > top_n:
        for rank, r in enumerate(kept[top_n:], start=top_n + 1):
            rejected.append({**r, "reason": f"below the top {top_n} by CLIP score (rank {rank})"})
        kept = kept[:top_n]
    for rank, r in enumerate(kept, start=1):
        r["rank"] = rank
    reasons: dict[str, int] = {}
    for r in rejected:
        kind = r["reason"].split(" (")[0].split(":")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    return {
        "counts": {
            "seen": len(kept) + len(rejected),
            "kept": len(kept),
            "rejected": len(rejected),
            "by_reason": reasons,
        },
        "broken_shards": broken_shards,
        "kept": kept,
        "rejected": sorted(rejected, key=lambda r: r["key"]),
    }


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    p.add_argument("--images", required=True, help="folder of tar shards")
    p.add_argument("--clip", required=True, help="CLIP model folder (or hub id in the local cache)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--work", default=None, help="where the per-shard progress is kept (a rerun resumes from it)")
    args = p.parse_args(argv)
    setup_logging()
    cfg = load_params(args.params)
    scorer = ClipScorer(args.clip, cfg["clip_prompt"], pick_device(args.device))
    t0 = time.time()
    result = select(args.images, cfg, scorer, args.work)
    seconds = round(time.time() - t0, 1)
    bad = {f"{r['shard']}/{r['key']}": r["reason"] for r in result["rejected"] if r["reason"].startswith(BAD_REASONS)}
    check_bad_share(bad, result["counts"]["seen"], cfg["max_bad_share"], "subset")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "subset.json").write_text(json.dumps(result, indent=1) + "\n")
    write_manifest(
        out / "manifest.json",
        build_manifest(
            "subset", cfg, None, device=str(scorer.device), counts=result["counts"], clip=args.clip, seconds=seconds
        ),
    )
    c = result["counts"]
    log.info("kept %d of %d images; rejected %s", c["kept"], c["seen"], c["by_reason"] or "none")
    for b in result["broken_shards"]:
        log.warning("shard %s broke off after %d samples: %s", b["shard"], b["samples_read"], b["error"])
    if args.work:
        Path(args.work, "state.json").unlink(missing_ok=True)  # done: a later run starts afresh
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
