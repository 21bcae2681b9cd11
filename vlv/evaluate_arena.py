"""Captioner arena (the paper's Table 2) with an exact judge: each caption's 0-6 rubric level.

The toy judge reads the caption with the Shapes parser, compares it with the scene graph and maps
coverage, hallucinations (invented objects, false relations, wrong positions, a wrong count) and
layout onto the paper's rubric levels (``vlv.shapes.judge.RUBRIC``). The paper profile's VLM judge
is not built yet.

Example:
    python -m vlv.evaluate_arena --images results/generate_shapes/eval \
        --captions results/caption/vlv_pairs100.jsonl --out results/evaluate/arena/vlv_pairs100.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from .data.shards import iter_dir
from .evaluate_captions_shapes import read_captions
from .manifest import build_manifest, write_manifest
from .shapes.judge import RUBRIC, arena_rating, score_caption
from .shapes.world import Scene


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True)
    p.add_argument("--captions", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    scenes = {k: Scene.from_json(json.loads(parts["json"])["scene"]) for k, parts in iter_dir(args.images)}
    caps = read_captions(args.captions)
    unknown = set(caps) - set(scenes)
    if unknown:
        raise SystemExit(f"{args.captions}: {len(unknown)} keys are not in {args.images}")
    ratings = {k: arena_rating(score_caption(scenes[k], c)) for k, c in sorted(caps.items())}
    counts = Counter(ratings.values())
    result = {
        "judge": "exact Shapes judge (scene graph + caption parser) on the paper's 0-6 rubric",
        "captions": len(ratings),
        "mean_rating": float(np.mean(list(ratings.values()))),
        "distribution": {str(level): counts.get(level, 0) for level in sorted(RUBRIC, reverse=True)},
        "ratings": ratings,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_manifest(out.with_suffix(".manifest.json"), build_manifest("evaluate_arena", vars(args), None))
    print(f"{args.captions}: mean rating {result['mean_rating']:.2f} over {len(ratings)} captions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
