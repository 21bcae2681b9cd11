"""Read a Shapes caption back into objects, attributes and spatial relations.

Tolerant of word order and phrasing: sentences are split at ``. ; :``, a sentence that names two
objects and a relation word is a relation, any other sentence is split at commas and "and" into
clauses, and each clause that names a shape is one object with whatever colour, size and position
words the clause holds. Words the parser does not understand are reported in ``unread``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .world import NUMBER_WORDS, PALETTE, SHAPES

SHAPE_WORDS = {s: s for s in SHAPES} | {"circles": "circle", "squares": "square", "triangles": "triangle"}
SIZE_WORDS = {"small": "small", "large": "large", "big": "large", "tiny": "small", "medium": "medium"}
COLOUR_WORDS = {c: c for c in PALETTE} | {"grey": "gray"}
VERTICAL = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
HORIZONTAL = {"left": "left", "right": "right"}
CENTRE = {"center", "centre", "middle"}
COUNT_WORDS = {w: n for n, w in NUMBER_WORDS.items()} | {str(n): n for n in NUMBER_WORDS}
RELATION_WORDS = {"above", "below", "over", "under", "beneath"}
FILLER = set(
    "a an the there is are at in on of and to with shape shapes object objects image shows "
    "plain gray background corner side it its picture one which".split()
)


@dataclass
class ParsedObject:
    shape: str
    colour: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass
class ParseResult:
    objects: list[ParsedObject] = field(default_factory=list)
    relations: list[tuple[str, str, str]] = field(default_factory=list)  # (subject, rel, object)
    count: int | None = None
    unread: list[str] = field(default_factory=list)

    def find(self, colour: str | None, shape: str) -> ParsedObject | None:
        for o in self.objects:
            if o.shape == shape and (colour is None or o.colour == colour):
                return o
        return None


def _position(words: list[str]) -> str | None:
    v = next((VERTICAL[w] for w in words if w in VERTICAL), None)
    h = next((HORIZONTAL[w] for w in words if w in HORIZONTAL), None)
    if v and h:
        return f"{v} {h}"
    if v or h:
        return v or h
    if any(w in CENTRE for w in words):
        return "center"
    return None


def _known(w: str) -> bool:
    return (
        w in SHAPE_WORDS
        or w in SIZE_WORDS
        or w in COLOUR_WORDS
        or w in VERTICAL
        or w in HORIZONTAL
        or w in CENTRE
        or w in COUNT_WORDS
        or w in RELATION_WORDS
        or w in FILLER
    )


def _mentions(words: list[str]) -> list[tuple[int, str | None, str]]:
    """(index, colour, shape) of each shape word, with the nearest colour word before it."""
    out = []
    for i, w in enumerate(words):
        if w in SHAPE_WORDS:
            colour = next((COLOUR_WORDS[x] for x in reversed(words[max(0, i - 3) : i]) if x in COLOUR_WORDS), None)
            out.append((i, colour, SHAPE_WORDS[w]))
    return out


def _relations(words: list[str]) -> list[str]:
    rels = []
    if any(w in ("above", "over") for w in words):
        rels.append("above")
    if any(w in ("below", "under", "beneath") for w in words):
        rels.append("below")
    for side in ("left", "right"):
        if any(w == side and nxt == "of" for w, nxt in zip(words, words[1:])):
            rels.append(f"{side} of")
    return rels


def _clause_object(words: list[str]) -> ParsedObject | None:
    ms = _mentions(words)
    if not ms:
        return None
    i, colour, shape = ms[0]
    window = words[max(0, i - 3) : i]
    size = next((SIZE_WORDS[w] for w in window if w in SIZE_WORDS), None)
    if colour is None:  # "a triangle in blue", "a large triangle, blue"
        colour = next((COLOUR_WORDS[w] for w in words if w in COLOUR_WORDS), None)
    if size is None:
        size = next((SIZE_WORDS[w] for w in words if w in SIZE_WORDS), None)
    return ParsedObject(shape=shape, colour=colour, size=size, position=_position(words))


def parse_caption(caption: str) -> ParseResult:
    res = ParseResult()
    for sentence in re.split(r"[.;:!?\n]+", caption.lower()):
        words = re.findall(r"[a-z0-9]+", sentence)
        if not words:
            continue
        res.unread.extend(w for w in words if not _known(w))
        ms = _mentions(words)
        if len(ms) == 0:
            n = next((COUNT_WORDS[w] for w in words if w in COUNT_WORDS), None)
            if n is not None and any(w in ("shape", "shapes", "object", "objects") for w in words):
                res.count = n
            continue
        if len(ms) >= 2:
            between = words[ms[0][0] + 1 : ms[1][0]]
            rels = _relations(between)
            if rels:
                subj = f"{ms[0][1]} {ms[0][2]}" if ms[0][1] else ms[0][2]
                obj = f"{ms[1][1]} {ms[1][2]}" if ms[1][1] else ms[1][2]
                res.relations.extend((subj, r, obj) for r in rels)
                continue
        clauses = re.split(r",|\band\b", sentence)
        for clause in clauses:
            cw = re.findall(r"[a-z0-9]+", clause)
            obj = _clause_object(cw)
            if obj is not None:
                res.objects.append(obj)
            elif any(w in COUNT_WORDS for w in cw) and any(w in ("shape", "shapes", "object", "objects") for w in cw):
                res.count = next(COUNT_WORDS[w] for w in cw if w in COUNT_WORDS)
        # "at the top left there is a large blue triangle, and in the center ..." puts the position
        # in the same clause as the object; "two shapes: ..." puts the count before a colon.
    return res
