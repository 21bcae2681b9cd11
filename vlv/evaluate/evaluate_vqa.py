"""Questions answered from one captioner's captions alone (the paper's Table 3).

For each question the reader sees only the caption of the question's image (and, with shots > 0,
solved examples from other images, shown with their reference captions); its answer is scored by
exact match (toy, one true answer) or the VQAv2 accuracy (paper). Writes the accuracy per number of
shots, overall and per question kind, the share answered "unknown", and every answer.

Example:
    python -m vlv.evaluate.evaluate_vqa --params '{"reader": "shapes_parser", "shots": [0], ...}' \
        --questions results/evaluate/vqa/questions.jsonl --captions results/caption/vlv_pairs100.jsonl \
        --references results/caption/reference.jsonl --out results/evaluate/vqa/vlv_pairs100.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from vlv.evaluate.evaluate_captions_shapes import read_captions
from vlv.evaluate.vqa_readers import make_reader, normalize_answer, pick_exemplars, score
from vlv.manifest import build_manifest, write_manifest
from vlv.shapes.questions import UNKNOWN


def read_questions(path: str | Path) -> list[dict]:
    questions = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for q in questions:
        missing = {"qid", "key", "question", "answers"} - set(q)
        if missing:
            raise SystemExit(f"{path}: question {q.get('qid', '?')} lacks {sorted(missing)}")
    return questions


def evaluate(questions: list[dict], captions: dict[str, str], references: dict[str, str], reader, cfg: dict) -> dict:
    missing = sorted({q["key"] for q in questions} - set(captions))
    if missing:
        raise SystemExit(f"{len(missing)} question images have no caption (first: {missing[0]})")
    result = {"reader": reader.name, "metric": cfg["metric"], "questions": len(questions), "shots": {}}
    bs = max(1, cfg["batch_size"])
    for shots in cfg["shots"]:
        exemplars = pick_exemplars(questions, references, shots, cfg["seed"])
        answers: list[str] = []
        for i in tqdm(range(0, len(questions), bs), desc=f"{shots}-shot", unit="batch", mininterval=5):
            batch = questions[i : i + bs]
            answers += reader.answer(
                [captions[q["key"]] for q in batch], [q["question"] for q in batch], exemplars[i : i + bs]
            )
        by_kind: dict[str, list[float]] = defaultdict(list)
        for q, a in zip(questions, answers):
            by_kind[q.get("kind", "all")].append(score(a, q["answers"], cfg["metric"]))
        scores = [s for v in by_kind.values() for s in v]
        result["shots"][str(shots)] = {
            "accuracy": sum(scores) / len(scores),
            "by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
            "unknown_share": sum(normalize_answer(a) == UNKNOWN for a in answers) / len(answers),
            "answers": {q["qid"]: a for q, a in zip(questions, answers)},
        }
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", required=True, help="the vqa config section as JSON")
    p.add_argument("--questions", required=True, help="JSONL: qid, key, question, answers[, kind]")
    p.add_argument("--captions", required=True, help="the captioner's JSONL (key, caption)")
    p.add_argument("--references", default=None, help="reference captions for the in-context examples")
    p.add_argument("--dataset", default=None, help="the question set's label in the table (default: the table's)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    cfg = json.loads(args.params)
    questions = read_questions(args.questions)
    references = read_captions(args.references) if args.references else {}
    reader = make_reader(cfg)
    result = evaluate(questions, read_captions(args.captions), references, reader, cfg)
    if args.dataset:
        result = {"dataset": args.dataset, **result}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    write_manifest(
        out.with_suffix(".manifest.json"),
        build_manifest("evaluate_vqa", cfg, cfg["seed"], **{k: v for k, v in vars(args).items() if k != "params"}),
    )
    for shots, r in result["shots"].items():
        print(f"{args.captions}: {shots}-shot accuracy {r['accuracy']:.3f} {r['by_kind']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
