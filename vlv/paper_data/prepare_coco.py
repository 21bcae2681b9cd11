"""The paper profile's evaluation split from MS-COCO 2014 val, and Table 3's VQAv2 questions on it.

``eval`` (default): a seeded sample of ``n_images`` image ids from the caption annotations
(``annotations/captions_val2014.json`` inside ``annotations_trainval2014.zip``) is recorded in
``images.json`` and the images are streamed from ``val2014.zip`` straight into tar shards (the JPEG
bytes unchanged; no loose files are extracted), or, with ``image_size`` (the paper profile: the
stages take one size), the centred square crop resized to it, as PNG (no second JPEG loss). Each
sample is ``<key>.jpg`` (or ``.png``) plus ``<key>.json``
with ``captions`` (the five human captions), ``coco_id``, ``file_name``, ``width`` and ``height``;
``captions_coco.json`` holds the sample's annotations in the COCO format, as the toy split does. An
image the annotations name but the archive lacks, or whose bytes fail the zip CRC, is skipped and
recorded in the manifest. Every zip entry passes ``vlv.paper_data.download.safe_zip_members`` first.

``vqa``: the VQAv2 val questions (``--questions`` zip) on the split's images, with their ten human
answers (``--annotations`` zip), as the JSONL ``vlv.evaluate.evaluate_vqa`` reads (``qid``, ``key``,
``question``, ``answers``, ``kind`` = the VQAv2 answer type).

Examples:
    python -m vlv.paper_data.prepare_coco eval --params '{"n_images": 30000, "seed": 0, "shard_size": 1000}' \
        --images data/download/val2014.zip --annotations data/download/annotations_trainval2014.zip \
        --out results/paper/prepare_coco/eval
    python -m vlv.paper_data.prepare_coco vqa --split results/paper/prepare_coco/eval \
        --questions data/download/v2_Questions_Val_mscoco.zip \
        --annotations data/download/v2_Annotations_Val_mscoco.zip --out results/paper/prepare_coco/vqav2.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from vlv.cli_common import load_params, setup_logging
from vlv.data.shards import BadImage, check_bad_share, decode_image, encode_png, square_crop, write_shard
from vlv.manifest import build_manifest, write_manifest
from vlv.paper_data.download import read_zip_json, safe_zip_members

log = logging.getLogger("vlv.paper_data.prepare_coco")


def coco_key(image_id: int) -> str:
    return f"{int(image_id):012d}"


def sample_ids(image_ids: list[int], n: int, seed: int) -> list[int]:
    """A seeded sample of ``n`` ids (all when ``n`` is at least their number), in increasing order."""
    ids = sorted(image_ids)
    if n >= len(ids):
        return ids
    pick = np.random.default_rng(seed).permutation(len(ids))[:n]
    return sorted(ids[i] for i in pick)


def make_eval(images_zip: str, annotations_zip: str, out: Path, cfg: dict) -> dict:
    ann = read_zip_json(annotations_zip, "captions_val2014.json")
    images = {im["id"]: im for im in ann["images"]}
    captions: dict[int, list[str]] = {}
    for a in ann["annotations"]:
        captions.setdefault(a["image_id"], []).append(a["caption"].strip())
    ids = sample_ids([i for i in images if captions.get(i)], int(cfg["n_images"]), int(cfg["seed"]))
    skipped: dict[str, str] = {}
    kept: list[int] = []
    side = cfg.get("image_size")
    with zipfile.ZipFile(images_zip) as zf:
        by_base = {PurePosixPath(m.filename).name: m for m in safe_zip_members(zf) if not m.is_dir()}

        def samples(chunk):
            for image_id in chunk:
                im = images[image_id]
                key = coco_key(image_id)
                member = by_base.get(im["file_name"])
                if member is None:
                    skipped[key] = f"'{im['file_name']}' is not in {Path(images_zip).name}"
                    continue
                try:
                    data = zf.read(member)
                except zipfile.BadZipFile as e:
                    skipped[key] = f"bad zip entry: {e}"
                    continue
                meta = {
                    "captions": captions[image_id],
                    "coco_id": image_id,
                    "file_name": im["file_name"],
                    "width": im["width"],
                    "height": im["height"],
                }
                if side:  # the stages take one size: the centred square, resized, stored losslessly
                    try:
                        img = square_crop(decode_image(data), side)
                    except BadImage as e:
                        skipped[key] = f"undecodable image ({e})"
                        continue
                    meta["image_size"] = side
                    parts = {"png": encode_png(img)}
                else:
                    parts = {"jpg": data}
                kept.append(image_id)
                yield key, {**parts, "json": json.dumps(meta, sort_keys=True).encode()}

        size = int(cfg["shard_size"])
        for s, start in enumerate(tqdm(range(0, len(ids), size), desc="COCO shards", unit="shard")):
            write_shard(out / f"shard-{s:05d}.tar", samples(ids[start : start + size]))
    kept_set = set(kept)
    (out / "images.json").write_text(json.dumps([coco_key(i) for i in kept], indent=0) + "\n")
    coco = {
        "info": {"description": f"MS-COCO 2014 val, {len(kept)} images (seed {cfg['seed']})"},
        "images": [images[i] for i in kept],
        "annotations": [a for a in ann["annotations"] if a["image_id"] in kept_set],
    }
    (out / "captions_coco.json").write_text(json.dumps(coco, sort_keys=True) + "\n")
    if skipped:
        log.warning("%d images skipped: %s", len(skipped), dict(list(skipped.items())[:5]))
    check_bad_share(skipped, len(ids), float(cfg["max_bad_share"]), "prepare_coco")
    return {"images": len(kept), "requested": int(cfg["n_images"]), "skipped": skipped}


def make_vqa(split: str, questions_zip: str, annotations_zip: str, out: Path) -> dict:
    keys = set(json.loads((Path(split) / "images.json").read_text()))
    questions = read_zip_json(questions_zip, "_questions.json")["questions"]
    answers = {a["question_id"]: a for a in read_zip_json(annotations_zip, "_annotations.json")["annotations"]}
    rows, unanswered = [], 0
    for q in questions:
        key = coco_key(q["image_id"])
        if key not in keys:
            continue
        a = answers.get(q["question_id"])
        if a is None:
            unanswered += 1
            continue
        rows.append(
            {
                "qid": str(q["question_id"]),
                "key": key,
                "question": q["question"],
                "answers": [x["answer"] for x in a["answers"]],
                "kind": a.get("answer_type", "all"),
            }
        )
    rows.sort(key=lambda r: (r["key"], r["qid"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return {"questions": len(rows), "images": len({r["key"] for r in rows}), "without_annotation": unanswered}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("eval", help="the evaluation split (shards) from val2014.zip and its captions")
    e.add_argument("--params", required=True, help='JSON: {"n_images", "seed", "shard_size"}')
    e.add_argument("--images", required=True)
    e.add_argument("--annotations", required=True)
    e.add_argument("--out", required=True)
    v = sub.add_parser("vqa", help="VQAv2 val questions on the split's images (JSONL)")
    v.add_argument("--split", required=True)
    v.add_argument("--questions", required=True)
    v.add_argument("--annotations", required=True)
    v.add_argument("--out", required=True)
    args = p.parse_args(argv)
    setup_logging()
    out = Path(args.out)
    if args.what == "eval":
        cfg = load_params(args.params)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        stats = make_eval(args.images, args.annotations, out, cfg)
        write_manifest(out / "manifest.json", build_manifest("prepare_coco", cfg, int(cfg["seed"]), **stats))
        print(f"{out}: {stats['images']} images ({len(stats['skipped'])} skipped)")
    else:
        stats = make_vqa(args.split, args.questions, args.annotations, out)
        write_manifest(out.with_suffix(".manifest.json"), build_manifest("prepare_vqa", vars(args), None, **stats))
        print(f"{out}: {stats['questions']} questions on {stats['images']} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
