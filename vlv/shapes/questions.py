"""Questions about a Shapes scene, and an exact reader that answers them from a caption alone.

The toy analogue of the paper's Table 3 (VQAv2 / OK-VQA answered by an LLM that sees only the
caption). Questions come from the scene graph, one family per attribute a caption can carry:

- ``count``: "How many objects are there?" -> "3" (one per image);
- ``shape``: "What shape is the red object?" -> "circle" (one per object; colours are distinct
  within a scene, so the colour names one object);
- ``colour``: "What colour is the circle?" -> "red" (one per object whose shape is unique in the
  scene; otherwise the question would be ambiguous);
- ``position``: "Where is the red circle?" -> "top left" (one per object; the nine cell names).

``answer_from_caption`` is the toy reader: it reads the question's words (kind, colour, shape) and
answers from the Shapes parser's reading of the caption, "unknown" when the caption does not say.
It is exact and deterministic, so it has no use for in-context examples.
"""

from __future__ import annotations

import re
from collections import Counter

from .parse import COLOUR_WORDS, SHAPE_WORDS, parse_caption
from .world import Scene

KINDS = ("count", "shape", "colour", "position")
UNKNOWN = "unknown"


def make_questions(scene: Scene, key: str) -> list[dict]:
    """Every unambiguous question of each family about one scene, in a fixed order."""
    qs = [{"kind": "count", "question": "How many objects are there?", "answers": [str(len(scene.objects))]}]
    shape_counts = Counter(o.shape for o in scene.objects)
    for o in scene.objects:
        qs.append({"kind": "shape", "question": f"What shape is the {o.colour} object?", "answers": [o.shape]})
        if shape_counts[o.shape] == 1:
            qs.append({"kind": "colour", "question": f"What colour is the {o.shape}?", "answers": [o.colour]})
        qs.append({"kind": "position", "question": f"Where is the {o.colour} {o.shape}?", "answers": [o.position]})
    return [{"qid": f"{key}-{i}", "key": key, **q} for i, q in enumerate(qs)]


def question_kind(question: str) -> str | None:
    q = question.lower()
    if q.startswith("how many"):
        return "count"
    if q.startswith("what shape"):
        return "shape"
    if q.startswith(("what colour", "what color")):
        return "colour"
    if q.startswith("where"):
        return "position"
    return None


def answer_from_caption(caption: str, question: str) -> str:
    """The answer the caption gives to a Shapes question, or "unknown"."""
    kind = question_kind(question)
    words = re.findall(r"[a-z]+", question.lower())
    colour = next((COLOUR_WORDS[w] for w in words if w in COLOUR_WORDS), None)
    shape = next((SHAPE_WORDS[w] for w in words if w in SHAPE_WORDS), None)
    parsed = parse_caption(caption)
    if kind == "count":
        if parsed.count is not None:
            return str(parsed.count)
        named = {(o.colour, o.shape) for o in parsed.objects}
        return str(len(named)) if named else UNKNOWN
    candidates = [
        o for o in parsed.objects if (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
    ]
    if not candidates:
        return UNKNOWN
    found = candidates[0]
    value = {"shape": found.shape, "colour": found.colour, "position": found.position}.get(kind)
    return value or UNKNOWN
