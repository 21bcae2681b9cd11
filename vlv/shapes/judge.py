"""Score a caption against its scene graph: what the paper asks a VLM judge, exact here.

A caption is read with the Shapes parser. Its objects are matched to the scene's by colour and
shape (a colourless mention matches an unmatched object of that shape). Per caption:

- ``coverage``: share of the scene's objects the caption names (colour and shape);
- ``hallucinated``: named objects that are not in the scene (each distinct colour+shape once);
- ``attribute_accuracy``: share of matched objects whose size *and* position are both stated
  correctly (a missing attribute counts as wrong); ``size_accuracy`` and ``position_accuracy``
  separately;
- ``relation_accuracy``: share of the stated pairwise relations ("the red circle is above the blue
  square") that are true of the scene (None when the caption states none);
- ``relation_recall``: share of the scene's relation facts (above/below/left of/right of, per
  ordered pair) the caption states (None for one-object scenes);
- ``count_correct``: whether a stated object count is right (None when none is stated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .captions import relation_parts
from .parse import ParsedObject, parse_caption
from .world import Scene, ShapeObject


@dataclass
class CaptionScore:
    objects: int
    covered: int
    hallucinated: int
    size_correct: int
    position_correct: int
    position_wrong: int  # stated, and not the object's cell (a missing position is an omission)
    attributes_correct: int
    relations_stated: int
    relations_true: int
    relation_facts: int
    relation_facts_stated: int
    count_correct: bool | None


def relation_facts(a: ShapeObject, b: ShapeObject) -> set[str]:
    """The relation words true of ``a`` relative to ``b``, as the parser reads them (above, below,
    left of, right of)."""
    return {p.removeprefix("to the ") for p in relation_parts(a, b)}


def _match(scene: Scene, parsed: list[ParsedObject]) -> tuple[dict[int, ParsedObject], int]:
    """Scene object index -> the first parsed mention of it; and the number of hallucinated mentions."""
    matched: dict[int, ParsedObject] = {}
    seen_false: set[tuple[str | None, str]] = set()
    for p in sorted(parsed, key=lambda p: p.colour is None):  # coloured mentions first
        cands = [
            i for i, o in enumerate(scene.objects) if o.shape == p.shape and (p.colour is None or o.colour == p.colour)
        ]
        if any(i in matched for i in cands) and p.colour is not None:
            continue  # a second mention of a matched object: not a new object
        free = [i for i in cands if i not in matched]
        if free:
            matched[free[0]] = p
        elif not cands or p.colour is None:
            if (p.colour, p.shape) not in seen_false:
                seen_false.add((p.colour, p.shape))
    return matched, len(seen_false)


def score_caption(scene: Scene, caption: str) -> CaptionScore:
    res = parse_caption(caption)
    matched, hallucinated = _match(scene, res.objects)
    size_ok = sum(p.size == scene.objects[i].size for i, p in matched.items())
    pos_ok = sum(p.position == scene.objects[i].position for i, p in matched.items())
    pos_wrong = sum(p.position is not None and p.position != scene.objects[i].position for i, p in matched.items())
    both_ok = sum(
        p.size == scene.objects[i].size and p.position == scene.objects[i].position for i, p in matched.items()
    )
    by_name = {f"{o.colour} {o.shape}": o for o in scene.objects}
    by_shape: dict[str, list[ShapeObject]] = {}
    for o in scene.objects:
        by_shape.setdefault(o.shape, []).append(o)

    def lookup(name: str) -> ShapeObject | None:
        if name in by_name:
            return by_name[name]
        same = by_shape.get(name, [])  # a bare shape word names an object only when it is unique
        return same[0] if len(same) == 1 else None

    stated, true = 0, 0
    stated_facts: set[tuple[int, int, str]] = set()
    index = {id(o): k for k, o in enumerate(scene.objects)}
    for subj, rel, obj in res.relations:
        stated += 1
        a, b = lookup(subj), lookup(obj)
        if a is not None and b is not None and a is not b and rel in relation_facts(a, b):
            true += 1
            stated_facts.add((index[id(a)], index[id(b)], rel))
    n_facts = sum(
        len(relation_facts(a, b)) for i, a in enumerate(scene.objects) for j, b in enumerate(scene.objects) if i < j
    )
    # a fact stated in either direction ("A above B" or "B below A") counts once
    canonical = set()
    flip = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
    for i, j, rel in stated_facts:
        canonical.add((i, j, rel) if i < j else (j, i, flip[rel]))
    return CaptionScore(
        objects=len(scene.objects),
        covered=len(matched),
        hallucinated=hallucinated,
        size_correct=size_ok,
        position_correct=pos_ok,
        position_wrong=pos_wrong,
        attributes_correct=both_ok,
        relations_stated=stated,
        relations_true=true,
        relation_facts=n_facts,
        relation_facts_stated=len(canonical),
        count_correct=None if res.count is None else res.count == len(scene.objects),
    )


def summarise_captions(scores: list[CaptionScore]) -> dict[str, float | int | None]:
    """Means over captions (object-level shares are pooled over all objects)."""
    if not scores:
        return {"captions": 0}
    tot = {k: sum(getattr(s, k) for s in scores) for k in ("objects", "covered", "relations_stated", "relation_facts")}
    covered = max(1, tot["covered"])
    counts = [s.count_correct for s in scores if s.count_correct is not None]

    def share(num: str, den: str) -> float | None:
        d = tot[den]
        return sum(getattr(s, num) for s in scores) / d if d else None

    return {
        "captions": len(scores),
        "coverage": tot["covered"] / max(1, tot["objects"]),
        "hallucinated_per_caption": float(np.mean([s.hallucinated for s in scores])),
        "attribute_accuracy": sum(s.attributes_correct for s in scores) / covered,
        "size_accuracy": sum(s.size_correct for s in scores) / covered,
        "position_accuracy": sum(s.position_correct for s in scores) / covered,
        "relation_accuracy": share("relations_true", "relations_stated"),
        "relation_recall": share("relation_facts_stated", "relation_facts"),
        "count_accuracy": float(np.mean(counts)) if counts else None,
        "exact": float(
            np.mean(
                [
                    s.covered == s.objects
                    and s.hallucinated == 0
                    and s.attributes_correct == s.objects
                    and s.relation_facts_stated == s.relation_facts
                    for s in scores
                ]
            )
        ),
    }


def score_captions(scenes: list[Scene], captions: list[str]) -> dict:
    return summarise_captions([score_caption(s, c) for s, c in zip(scenes, captions, strict=True)])


# The paper's arena rubric (Appendix D), 0-6: coverage, no hallucination, spatial layout.
RUBRIC = {
    6: "comprehensive coverage, correct spatial layout, no hallucination",
    5: "very informative, correct layout, no hallucination, minor omissions",
    4: "moderate coverage, correct layout, no hallucination, several omissions",
    3: "limited coverage, minimal spatial detail, no hallucination",
    2: "informative but at least one hallucination (object or spatial)",
    1: "limited coverage and at least one hallucination",
    0: "not informative and/or multiple hallucinations",
}


def hallucinations(s: CaptionScore) -> int:
    """Invented objects, false relations, wrongly stated positions and a wrong count (the rubric counts
    wrong spatial statements as hallucinations)."""
    return s.hallucinated + (s.relations_stated - s.relations_true) + s.position_wrong + int(s.count_correct is False)


def informativeness(s: CaptionScore) -> float:
    """Mean of object coverage, attribute completeness of the covered objects and relation recall
    (omitting an obvious relation lowers coverage)."""
    parts = [s.covered / max(1, s.objects), s.attributes_correct / max(1, s.objects)]
    if s.relation_facts:
        parts.append(s.relation_facts_stated / s.relation_facts)
    return float(np.mean(parts))


def arena_rating(s: CaptionScore) -> int:
    """The rubric level of one caption, from its exact scores."""
    h, info = hallucinations(s), informativeness(s)
    if h == 0:
        return 6 if info >= 0.999 else 5 if info >= 0.75 else 4 if info >= 0.5 else 3
    if h == 1:
        return 2 if info >= 0.5 else 1 if info >= 0.25 else 0
    return 0
