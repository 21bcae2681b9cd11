"""Read flat-coloured objects back out of a rendered or generated image by colour segmentation.

Each pixel takes the nearest of the world's colours and the background; pixels of one colour split
into 4-connected components; a component big enough is an object whose shape comes from how much of
its bounding box it fills (square > 0.86 > circle > 0.62 > triangle), whose size is the nearest
nominal size to its extent, and whose centre is its bounding-box centre. The same module scores a
set of detections against a scene graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .world import PALETTE, Scene, WorldSpec

MAX_COLOUR_DIST = 90.0
SQUARE_FILL = 0.86
CIRCLE_FILL = 0.62


@dataclass
class Detection:
    colour: str
    shape: str
    size: str
    center: tuple[float, float]
    extent: float
    area: int
    row: int
    col: int


def detect(image: np.ndarray, spec: WorldSpec) -> list[Detection]:
    """Objects in one HxWx3 uint8 image, largest first."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    refs = np.array([PALETTE[c] for c in spec.colours] + [spec.background], dtype=np.float32)
    dist = np.linalg.norm(img[:, :, None, :] - refs[None, None], axis=-1)  # H,W,K+1
    nearest = dist.argmin(-1)
    ok = dist.min(-1) < MAX_COLOUR_DIST
    scale = img.shape[0] / spec.image_size
    min_area = max(3, int(0.25 * (min(spec.sizes.values()) * img.shape[0]) ** 2))
    dets = []
    for k, colour in enumerate(spec.colours):
        mask = (nearest == k) & ok
        if not mask.any():
            continue
        labels, n = ndimage.label(mask)
        for sl_idx, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            area = int((labels[sl] == sl_idx).sum())
            if area < min_area:
                continue
            h = sl[0].stop - sl[0].start
            w = sl[1].stop - sl[1].start
            fill = area / float(h * w)
            shape = "square" if fill > SQUARE_FILL else "circle" if fill > CIRCLE_FILL else "triangle"
            cx = (sl[1].start + sl[1].stop) / 2.0 / scale
            cy = (sl[0].start + sl[0].stop) / 2.0 / scale
            extent = max(h, w) / scale
            row, col = spec.cell_of_point(cx, cy)
            dets.append(Detection(colour, shape, spec.size_of_extent(extent), (cx, cy), extent, area, row, col))
    dets.sort(key=lambda d: -d.area)
    return dets


@dataclass
class SceneScore:
    """How well detections in one image reproduce a scene graph."""

    n_objects: int
    colour_hits: int  # objects with a detection of the same colour
    colour_shape_hits: int  # ... of the same colour and shape
    cell_hits: int  # of the colour+shape hits, those in the right cell
    size_hits: int  # of the colour+shape hits, those of the right size
    center_err_px: list[float]  # of the colour+shape hits
    scale_diff: list[float]  # (extent - true extent) / image size, of the colour+shape hits
    extra: int  # detections left unmatched


def score_scene(scene: Scene, dets: list[Detection], spec: WorldSpec) -> SceneScore:
    unused = list(range(len(dets)))
    colour_hits = cs_hits = cell_hits = size_hits = 0
    center_err: list[float] = []
    scale_diff: list[float] = []
    for o in scene.objects:
        if any(d.colour == o.colour for d in dets):
            colour_hits += 1
        match = next((i for i in unused if dets[i].colour == o.colour and dets[i].shape == o.shape), None)
        if match is None:
            continue
        unused.remove(match)
        d = dets[match]
        cs_hits += 1
        cell_hits += int((d.row, d.col) == (o.row, o.col))
        size_hits += int(d.size == o.size)
        center_err.append(float(np.hypot(d.center[0] - o.center[0], d.center[1] - o.center[1])))
        scale_diff.append((d.extent - o.extent) / spec.image_size)
    extra = sum(1 for i in unused if not any(o.colour == dets[i].colour for o in scene.objects))
    return SceneScore(len(scene.objects), colour_hits, cs_hits, cell_hits, size_hits, center_err, scale_diff, extra)


def by_object_count(scores: list[SceneScore]) -> dict[str, dict[str, float]]:
    """Per number of objects in the scene ("1", "2", ...) and over all ("all"): colour+shape found (of
    all objects), shape right of the objects whose colour was drawn (what stage 1 carries beyond
    colour), size right of the colour+shape matches."""
    out = {}
    for stratum in ["all", *sorted({str(s.n_objects) for s in scores})]:
        part = [s for s in scores if stratum == "all" or str(s.n_objects) == stratum]
        objects, colour = sum(s.n_objects for s in part), sum(s.colour_hits for s in part)
        cs = sum(s.colour_shape_hits for s in part)
        out[stratum] = {
            "objects": objects,
            "colour_shape_found": round(cs / max(objects, 1), 4),
            "shape_right_of_drawn_colours": round(cs / max(colour, 1), 4),
            "size_right_of_matched": round(sum(s.size_hits for s in part) / max(cs, 1), 4),
        }
    return out


def summarise(scores: list[SceneScore]) -> dict[str, float]:
    """Recall of colour and colour+shape over all prompted objects; placement over the matched."""
    n = sum(s.n_objects for s in scores)
    cs = sum(s.colour_shape_hits for s in scores)
    errs = [e for s in scores for e in s.center_err_px]
    scale = [e for s in scores for e in s.scale_diff]
    return {
        "objects": n,
        "colour_recall": sum(s.colour_hits for s in scores) / max(n, 1),
        "colour_shape_recall": cs / max(n, 1),
        "cell_accuracy_of_matched": sum(s.cell_hits for s in scores) / max(cs, 1),
        "size_accuracy_of_matched": sum(s.size_hits for s in scores) / max(cs, 1),
        "colour_shape_cell_recall": sum(s.cell_hits for s in scores) / max(n, 1),
        # None (JSON null), not NaN, when nothing matched: the reports must stay valid JSON.
        "mean_center_error_px": float(np.mean(errs)) if errs else None,
        "mean_scale_error": float(np.mean(np.abs(scale))) if scale else None,
        # signed: above 0 when objects are drawn larger than they are (guidance can inflate them)
        "mean_scale_bias": float(np.mean(scale)) if scale else None,
        "extra_detections_per_image": sum(s.extra for s in scores) / max(len(scores), 1),
    }
