"""The Shapes splits, defined by (seed, size) in the config: one definition for every stage.

Scene ids are offset per split so that an id names one scene across the whole project.
"""

from __future__ import annotations

from .world import Scene, WorldSpec, sample_scenes

SPLITS = ("pool", "pairs", "eval")
ID_OFFSET = {"pool": 0, "pairs": 10_000_000, "eval": 20_000_000}


def split_scenes(shapes_cfg: dict, split: str) -> list[Scene]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {SPLITS}")
    s = shapes_cfg["splits"][split]
    return sample_scenes(WorldSpec.from_config(shapes_cfg), int(s["seed"]), int(s["n"]), first_id=ID_OFFSET[split])
