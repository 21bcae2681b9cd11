"""Generate one split of the Shapes world: images in tar shards, scene graphs, captions, a manifest.

The split's scenes are a pure function of (world spec, split seed, size), so the same config gives
the same bytes. Each sample of a shard is ``<key>.png`` plus ``<key>.json`` holding the scene graph,
the short reference captions and the exhaustive teacher caption. The evaluation split also gets
``captions_coco.json`` in the MS-COCO caption format (``images`` + ``annotations``).

Outputs (``--out DIR``): ``shard-00000.tar ...``, ``scenes.jsonl``, ``manifest.json`` and, for the
evaluation split, ``captions_coco.json``.

Example:
    python -m vlv.stages.generate_shapes --params "$(python -m vlv.config shapes)" --split eval \
        --out results/generate_shapes/eval
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tqdm import tqdm

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.data.shards import encode_png, write_shard
from vlv.manifest import build_manifest, write_manifest
from vlv.shapes.captions import reference_captions, relation_words, teacher_caption
from vlv.shapes.splits import SPLITS, split_scenes
from vlv.shapes.world import WorldSpec, render


def sample_key(scene_id: int) -> str:
    return f"{scene_id:08d}"


def scene_relations(scene) -> list[dict]:
    """Pairwise spatial relations of a scene graph (subject and object by index)."""
    out = []
    for i, a in enumerate(scene.objects):
        for j, b in enumerate(scene.objects):
            if i != j and (rel := relation_words(a, b)) is not None:
                out.append({"subject": i, "relation": rel, "object": j})
    return out


def coco_captions(records: list[dict]) -> dict:
    images, annotations = [], []
    for r in records:
        images.append({"id": r["id"], "file_name": f"{r['key']}.png", "width": r["width"], "height": r["height"]})
        for cap in r["captions"]:
            annotations.append({"id": len(annotations), "image_id": r["id"], "caption": cap})
    return {
        "info": {"description": "Shapes world evaluation split (VLV toy profile)"},
        "images": images,
        "annotations": annotations,
    }


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    log = setup_logging()
    cfg = load_params(args.params)
    spec = WorldSpec.from_config(cfg)
    scenes = split_scenes(cfg, args.split)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    seed = int(cfg["splits"][args.split]["seed"])

    records = []
    for s in tqdm(scenes, desc=f"shapes {args.split}", mininterval=5):
        img = render(s, spec)
        records.append(
            {
                "key": sample_key(s.id),
                "id": s.id,
                "width": img.width,
                "height": img.height,
                "scene": {**s.to_json(), "relations": scene_relations(s)},
                "captions": reference_captions(s, seed, n=int(cfg["eval_references"])),
                "teacher_caption": teacher_caption(s, spec),
                "png": encode_png(img),
            }
        )
    shard_size = int(cfg["shard_size"])
    shards = []
    for k in range(0, len(records), shard_size):
        chunk = records[k : k + shard_size]
        path = out / f"shard-{k // shard_size:05d}.tar"
        write_shard(
            path,
            (
                (
                    r["key"],
                    {
                        "png": r["png"],
                        "json": json.dumps(
                            {x: r[x] for x in ("id", "scene", "captions", "teacher_caption")}, sort_keys=True
                        ).encode(),
                    },
                )
                for r in chunk
            ),
        )
        shards.append(
            {"file": path.name, "samples": len(chunk), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        )
    with (out / "scenes.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps({"key": r["key"], **r["scene"]}, sort_keys=True) + "\n")
    if args.split == "eval":
        (out / "captions_coco.json").write_text(json.dumps(coco_captions(records), indent=1, sort_keys=True) + "\n")
    write_manifest(
        out / "manifest.json",
        build_manifest("generate_shapes", cfg, seed, split=args.split, samples=len(records), shards=shards),
    )
    log.info("wrote %d %s scenes in %d shard(s) to %s", len(records), args.split, len(shards), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
