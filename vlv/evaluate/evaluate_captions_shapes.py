"""Score every captioner's evaluation captions against the Shapes scene graphs (toy profile).

For each captioner: object coverage, hallucinated objects per caption, attribute (size and
position) accuracy, spatial-relation accuracy and recall, count accuracy and the share of exactly
right captions (``vlv.shapes.judge``). Writes one JSON (per captioner), one CSV row per captioner and
a figure of the first images beside every captioner's caption (``<out>.png``).

Example:
    python -m vlv.evaluate.evaluate_captions_shapes --images results/generate_shapes/eval \
        --captions vlv_pairs100=results/caption/vlv_pairs100.jsonl teacher=results/caption/teacher.jsonl \
        --out results/evaluate/captions_shapes.json
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from vlv.data.shards import iter_dir, load_images
from vlv.figures import save_captions_figure
from vlv.manifest import build_manifest, write_manifest
from vlv.shapes.judge import score_captions
from vlv.shapes.world import Scene

COLUMNS = [
    "captioner",
    "captions",
    "coverage",
    "hallucinated_per_caption",
    "attribute_accuracy",
    "size_accuracy",
    "position_accuracy",
    "relation_accuracy",
    "relation_recall",
    "count_accuracy",
    "exact",
]


def read_captions(path: str | Path) -> dict[str, str]:
    return {r["key"]: r["caption"] for r in map(json.loads, Path(path).read_text().splitlines()) if r}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="the evaluation shards (scene graphs in their metadata)")
    p.add_argument("--captions", nargs="+", required=True, metavar="NAME=JSONL")
    p.add_argument("--out", required=True, help="JSON output; the CSV goes beside it")
    args = p.parse_args(argv)
    scenes = {k: Scene.from_json(json.loads(parts["json"])["scene"]) for k, parts in iter_dir(args.images)}
    results, all_caps = {}, {}
    for item in args.captions:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--captions takes NAME=JSONL, got {item!r}")
        caps = read_captions(path)
        unknown = set(caps) - set(scenes)
        if unknown:
            raise SystemExit(f"{path}: {len(unknown)} keys are not in {args.images} (e.g. {sorted(unknown)[:3]})")
        keys = sorted(caps)
        results[name] = score_captions([scenes[k] for k in keys], [caps[k] for k in keys])
        all_caps[name] = caps
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for name, r in results.items():
            w.writerow([name] + [_fmt(r.get(c)) for c in COLUMNS[1:]])
    shown = sorted(next(iter(all_caps.values())))[:6]
    _, images, _ = load_images(args.images, shown)
    save_captions_figure(out.with_suffix(".png"), images, {n: [c[k] for k in shown] for n, c in all_caps.items()})
    write_manifest(
        out.with_suffix(".manifest.json"),
        build_manifest("evaluate_captions_shapes", {"captions": args.captions}, None, images=args.images),
    )
    for name, r in results.items():
        print(f"{name:>22}: coverage {r['coverage']:.3f}  halluc/cap {r['hallucinated_per_caption']:.3f}  "
              f"attr {r['attribute_accuracy']:.3f}  rel acc {_fmt(r['relation_accuracy'])}  exact {r['exact']:.3f}")  # fmt: skip
    return 0


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    raise SystemExit(main())
