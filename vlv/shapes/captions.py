"""Captions of a Shapes scene: short captions in several phrasings and the exhaustive teacher caption.

The teacher caption is the toy stand-in for the paper's Gemini captions: every object with all
of its attributes and position, then every pairwise spatial relation.
"""

from __future__ import annotations

import numpy as np

from .world import NUMBER_WORDS, Scene, ShapeObject, WorldSpec

# Ways to say where a cell is; the first is the canonical one. The parser reads all of them.
POSITION_PHRASES = {
    "top left": ["at the top left", "in the top left corner", "in the upper left"],
    "top": ["at the top", "at the top middle", "in the upper middle"],
    "top right": ["at the top right", "in the top right corner", "in the upper right"],
    "left": ["on the left", "at the middle left", "on the left side"],
    "center": ["in the center", "in the middle", "at the centre"],
    "right": ["on the right", "at the middle right", "on the right side"],
    "bottom left": ["at the bottom left", "in the bottom left corner", "in the lower left"],
    "bottom": ["at the bottom", "at the bottom middle", "in the lower middle"],
    "bottom right": ["at the bottom right", "in the bottom right corner", "in the lower right"],
}
N_PHRASINGS = 3


def background_name(spec: WorldSpec) -> str:
    r, g, b = spec.background
    if max(r, g, b) - min(r, g, b) < 20:
        return "white" if r > 200 else "black" if r < 50 else "gray"
    return "coloured"


def mention(o: ShapeObject) -> str:
    return f"a {o.size} {o.colour} {o.shape}"


def _position(o: ShapeObject, rng: np.random.Generator | None) -> str:
    options = POSITION_PHRASES[o.position]
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def short_caption(scene: Scene, rng: np.random.Generator, phrasing: int | None = None) -> str:
    """One short caption; the phrasing, object order and position wording are drawn from ``rng``."""
    if phrasing is None:
        phrasing = int(rng.integers(N_PHRASINGS))
    objs = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    if phrasing == 0:
        return _join([f"{mention(o)} {_position(o, rng)}" for o in objs])
    if phrasing == 1:
        return _join([f"{_position(o, rng)} there is {mention(o)}" for o in objs])
    if phrasing == 2:
        n = len(objs)
        noun = "shape" if n == 1 else "shapes"
        return f"{NUMBER_WORDS[n]} {noun}: " + _join([f"{mention(o)} {_position(o, rng)}" for o in objs])
    raise ValueError(f"phrasing must be in 0..{N_PHRASINGS - 1}, got {phrasing}")


def relation_parts(a: ShapeObject, b: ShapeObject) -> list[str]:
    """How ``a`` lies relative to ``b``: a subset of "above"/"below", "to the left of"/"to the right of"."""
    parts = []
    if a.row < b.row:
        parts.append("above")
    elif a.row > b.row:
        parts.append("below")
    if a.col < b.col:
        parts.append("to the left of")
    elif a.col > b.col:
        parts.append("to the right of")
    return parts


def relation_words(a: ShapeObject, b: ShapeObject) -> str | None:
    """The relation as words ("above and to the left of"), or None in the same cell."""
    parts = relation_parts(a, b)
    return " and ".join(parts) if parts else None


def teacher_caption(scene: Scene, spec: WorldSpec) -> str:
    """The exhaustive caption: count, background, each object in reading order, every relation."""
    n = len(scene.objects)
    noun = "object" if n == 1 else "objects"
    sents = [f"The image shows {NUMBER_WORDS[n]} {noun} on a plain {background_name(spec)} background."]
    for o in scene.objects:
        where = POSITION_PHRASES[o.position][0]
        sents.append(f"{where[0].upper()}{where[1:]} there is {mention(o)}.")
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1 :]:
            rel = relation_words(a, b)
            if rel is not None:
                sents.append(f"The {a.colour} {a.shape} is {rel} the {b.colour} {b.shape}.")
    return " ".join(sents)


def reference_captions(scene: Scene, seed: int, n: int = 5) -> list[str]:
    """``n`` distinct-as-possible short captions (the COCO-style references of the eval split)."""
    rng = np.random.default_rng([seed, scene.id])
    caps: list[str] = []
    for k in range(n * 4):
        c = short_caption(scene, rng, phrasing=k % N_PHRASINGS)
        if c not in caps:
            caps.append(c)
        if len(caps) == n:
            break
    while len(caps) < n:  # a one-object scene has few distinct phrasings
        caps.append(caps[len(caps) % max(1, len(caps))])
    return caps
