"""The Shapes world: scenes of flat-coloured objects, their scene graphs, renders and captions.

Everything is a pure function of a seed and a :class:`WorldSpec`, so the same seed gives the same
bytes. A scene holds 1..max_objects objects, each in its own cell of a grid, with distinct
colours (so that colour segmentation can tell objects apart and a colour names an object).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "cyan": (40, 200, 210),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}

# Names of the cells of a 3x3 and a 2x2 grid, row-major.
CELL_NAMES = {
    3: [
        ["top left", "top", "top right"],
        ["left", "center", "right"],
        ["bottom left", "bottom", "bottom right"],
    ],
    2: [["top left", "top right"], ["bottom left", "bottom right"]],
}


@dataclass(frozen=True)
class WorldSpec:
    """What scenes can contain. Mirrors the ``shapes`` section of the config."""

    image_size: int = 32
    grid: int = 3
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
    shapes: tuple[str, ...] = SHAPES
    sizes: dict[str, float] = field(default_factory=lambda: {"small": 0.2, "large": 0.32})
    object_counts: tuple[int, ...] = (1, 2, 3)
    object_count_weights: tuple[float, ...] = (0.34, 0.33, 0.33)
    background: tuple[int, int, int] = (128, 128, 128)

    @classmethod
    def from_config(cls, cfg: dict) -> WorldSpec:
        return cls(
            image_size=int(cfg["image_size"]),
            grid=int(cfg["grid"]),
            colours=tuple(cfg["colours"]),
            shapes=tuple(cfg["shapes"]),
            sizes={k: float(v) for k, v in cfg["sizes"].items()},
            object_counts=tuple(int(n) for n in cfg["object_counts"]),
            object_count_weights=tuple(float(w) for w in cfg["object_count_weights"]),
            background=tuple(int(c) for c in cfg["background"]),
        )

    def __post_init__(self):
        unknown = [c for c in self.colours if c not in PALETTE]
        if unknown:
            raise ValueError(f"unknown colour(s) {unknown}; known: {sorted(PALETTE)}")
        bad = [s for s in self.shapes if s not in SHAPES]
        if bad:
            raise ValueError(f"unknown shape(s) {bad}; known: {list(SHAPES)}")
        if self.grid not in CELL_NAMES:
            raise ValueError(f"grid must be one of {sorted(CELL_NAMES)}, got {self.grid}")
        if max(self.object_counts) > min(self.grid**2, len(self.colours)):
            raise ValueError("more objects per scene than cells or colours")
        if len(self.object_counts) != len(self.object_count_weights):
            raise ValueError("object_counts and object_count_weights differ in length")

    @property
    def cell_px(self) -> float:
        return self.image_size / self.grid

    def cell_name(self, row: int, col: int) -> str:
        return CELL_NAMES[self.grid][row][col]

    def cell_of_name(self, name: str) -> tuple[int, int]:
        for r, row in enumerate(CELL_NAMES[self.grid]):
            for c, n in enumerate(row):
                if n == name:
                    return r, c
        raise KeyError(name)

    def cell_of_point(self, x: float, y: float) -> tuple[int, int]:
        g = self.grid
        col = min(g - 1, max(0, int(x / self.cell_px)))
        row = min(g - 1, max(0, int(y / self.cell_px)))
        return row, col

    def size_of_extent(self, extent_px: float) -> str:
        """The size name whose nominal extent is nearest to a measured extent in pixels."""
        return min(self.sizes, key=lambda s: abs(self.sizes[s] * self.image_size - extent_px))


@dataclass
class ShapeObject:
    shape: str
    colour: str
    size: str
    row: int
    col: int
    position: str  # the cell's name, e.g. "top left"
    center: tuple[float, float]  # pixels (x, y)
    extent: float  # side or diameter in pixels


@dataclass
class Scene:
    id: int
    objects: list[ShapeObject]

    def to_json(self) -> dict:
        return {"id": self.id, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_json(cls, d: dict) -> Scene:
        objs = []
        for o in d["objects"]:
            o = dict(o)
            o["center"] = tuple(o["center"])
            objs.append(ShapeObject(**o))
        return cls(id=int(d["id"]), objects=objs)


def sample_scene(spec: WorldSpec, rng: np.random.Generator, scene_id: int) -> Scene:
    n = int(rng.choice(spec.object_counts, p=np.asarray(spec.object_count_weights) / sum(spec.object_count_weights)))
    cells = rng.choice(spec.grid * spec.grid, size=n, replace=False)
    colours = rng.choice(len(spec.colours), size=n, replace=False)
    size_names = list(spec.sizes)
    objs = []
    for cell, ci in zip(cells, colours, strict=True):
        row, col = divmod(int(cell), spec.grid)
        size = size_names[int(rng.integers(len(size_names)))]
        shape = spec.shapes[int(rng.integers(len(spec.shapes)))]
        cx = (col + 0.5) * spec.cell_px
        cy = (row + 0.5) * spec.cell_px
        objs.append(
            ShapeObject(
                shape=shape,
                colour=spec.colours[int(ci)],
                size=size,
                row=row,
                col=col,
                position=spec.cell_name(row, col),
                center=(float(cx), float(cy)),
                extent=float(spec.sizes[size] * spec.image_size),
            )
        )
    objs.sort(key=lambda o: (o.row, o.col))
    return Scene(id=scene_id, objects=objs)


def move_objects(scene: Scene, spec: WorldSpec, rng: np.random.Generator) -> Scene:
    """The scene with every object moved to another cell (distinct cells, drawn from ``rng``), each
    keeping its shape, colour and size: what a caption with its positions shuffled describes."""
    cells = spec.grid * spec.grid
    if len(scene.objects) >= cells:
        raise ValueError(f"scene {scene.id}: {len(scene.objects)} objects leave no free cell to move to")
    while True:
        new = rng.choice(cells, size=len(scene.objects), replace=False)
        if all(divmod(int(c), spec.grid) != (o.row, o.col) for c, o in zip(new, scene.objects, strict=True)):
            break
    objs = []
    for c, o in zip(new, scene.objects, strict=True):
        row, col = divmod(int(c), spec.grid)
        center = ((col + 0.5) * spec.cell_px, (row + 0.5) * spec.cell_px)
        objs.append(replace(o, row=row, col=col, position=spec.cell_name(row, col), center=center))
    return Scene(scene.id, sorted(objs, key=lambda o: (o.row, o.col)))


def sample_scenes(spec: WorldSpec, seed: int, n: int, first_id: int = 0) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(spec, rng, first_id + i) for i in range(n)]


def render(scene: Scene, spec: WorldSpec) -> Image.Image:
    """Draw a scene without anti-aliasing, so every object pixel has its exact palette colour."""
    img = Image.new("RGB", (spec.image_size, spec.image_size), tuple(spec.background))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        cx, cy = o.center
        h = o.extent / 2.0
        box = [round(cx - h), round(cy - h), round(cx + h) - 1, round(cy + h) - 1]
        fill = PALETTE[o.colour]
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(box, fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2.0, box[1])], fill=fill)
        else:  # pragma: no cover - WorldSpec validates shapes
            raise ValueError(o.shape)
    return img


def render_array(scenes: list[Scene], spec: WorldSpec) -> np.ndarray:
    return np.stack([np.asarray(render(s, spec)) for s in scenes])
