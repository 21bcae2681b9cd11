"""Questions about the evaluation images, from their scene graphs (toy profile; Table 3's input).

Writes one JSON line per question: ``qid``, ``key`` (the image), ``kind``, ``question`` and
``answers`` (the ground truth). The paper profile reads VQAv2 / OK-VQA questions in the same
format instead. See ``vlv.shapes.questions`` for the question families.

Example:
    python -m vlv.evaluate.make_questions --images results/generate_shapes/eval --out results/evaluate/vqa/questions.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from vlv.data.shards import iter_dir
from vlv.manifest import build_manifest, write_manifest
from vlv.shapes.questions import make_questions
from vlv.shapes.world import Scene


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="the evaluation shards (scene graphs in their metadata)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    questions = []
    for key, parts in iter_dir(args.images):
        questions.extend(make_questions(Scene.from_json(json.loads(parts["json"])["scene"]), key))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(q) + "\n" for q in questions))
    kinds = Counter(q["kind"] for q in questions)
    write_manifest(
        out.with_suffix(".manifest.json"),
        build_manifest("make_questions", vars(args), None, questions=len(questions), kinds=dict(kinds)),
    )
    print(f"{out}: {len(questions)} questions ({dict(kinds)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
