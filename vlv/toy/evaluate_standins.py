"""Benchmark the toy stand-ins on the held-out evaluation scenes.

For each text-to-image pipeline: render the evaluation captions with a fixed seed at each guidance
scale, read the renders back with the Shapes detector, and report the share of prompted objects
whose colour, and colour and shape, appear (recall), and of those the share in the right cell
(placement), against the empty-caption floor; and whether it draws where it is told
(``position_check``: the same captions with every object moved to another cell). For the CLIP model: top-1 image->caption retrieval
among the evaluation split's teacher captions. Writes a JSON report and a grid of samples, and
prints a table.

Example:
    python -m vlv.toy.evaluate_standins --params '{...}' --t2i models/toy/t2i --t2i models/toy/renderer \
        --clip models/toy/clip --out results/pretrain_toy/benchmark.json --grid results/pretrain_toy/samples.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.figures import save_image_grid
from vlv.manifest import build_manifest
from vlv.models.clip_features import ClipFeatures
from vlv.models.t2i import load_t2i_pipeline, render_captions
from vlv.shapes.captions import short_caption
from vlv.shapes.detect import detect, score_scene, summarise
from vlv.shapes.splits import split_scenes
from vlv.shapes.world import WorldSpec, move_objects, render_array
from vlv.training import pick_device


def eval_captions(scenes, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [short_caption(s, rng, phrasing=0) for s in scenes]


def t2i_report(pipe, scenes, captions, spec: WorldSpec, guidances, steps: int, seed: int) -> tuple[dict, dict]:
    report, renders = {}, {}
    for g in guidances:
        imgs = render_captions(pipe, captions, g, steps, seed)
        renders[f"cfg{g:g}"] = imgs
        report[f"cfg{g:g}"] = summarise([score_scene(s, detect(im, spec), spec) for s, im in zip(scenes, imgs)])
    floor = render_captions(pipe, [""] * len(captions), 1.0, steps, seed)
    renders["empty"] = floor
    report["empty_caption_floor"] = summarise([score_scene(s, detect(im, spec), spec) for s, im in zip(scenes, floor)])
    return report, renders


def position_check(
    pipe, scenes, spec: WorldSpec, guidance: float, steps: int, seed: int, clip=None, true_renders=None
) -> dict:
    """Does the pipeline draw objects where the caption puts them? The captions of ``scenes`` and of
    the same scenes with every object moved to another cell (``move_objects``), rendered alike: the
    detector's right cell against the scenes each caption describes (``true``, ``moved``) and, for the
    moved captions, against the original cells (near 0 when position is obeyed); with a CLIP model
    (``vlv.models.clip_features.ClipFeatures``), each render's squared feature distance to the
    original image, averaged (the caption -> image distance of Table 1, image by image).
    ``true_renders``: the true captions' renders when ``t2i_report`` has made them already."""
    rng = np.random.default_rng([seed, 1])
    described = {"true": scenes, "moved": [move_objects(s, spec, rng) for s in scenes]}
    out: dict = {"guidance": guidance}
    originals = clip.images(render_array(scenes, spec)) if clip is not None else None
    for name, sc in described.items():
        if name == "true" and true_renders is not None:
            imgs = true_renders
        else:
            imgs = render_captions(pipe, eval_captions(sc, seed), guidance, steps, seed)
        out[name] = summarise([score_scene(s, detect(im, spec), spec) for s, im in zip(sc, imgs)])
        if name == "moved":
            at_origin = summarise([score_scene(s, detect(im, spec), spec) for s, im in zip(scenes, imgs)])
            out["moved_drawn_in_the_original_cells"] = at_origin["colour_shape_cell_recall"]
        if clip is not None:
            out.setdefault("clip_sq_distance_to_originals", {})[name] = float(
                ((clip.images(np.stack(imgs)) - originals) ** 2).sum(-1).mean()
            )
    return out


@torch.no_grad()
def clip_retrieval(path: str, scenes, spec: WorldSpec, device) -> dict:
    from transformers import AutoProcessor, CLIPModel

    from vlv.models.hub import require_local
    from vlv.shapes.captions import teacher_caption

    path = require_local(path, "CLIP model")
    model = CLIPModel.from_pretrained(path).to(device).eval()
    proc = AutoProcessor.from_pretrained(path)
    texts = [teacher_caption(s, spec) for s in scenes]
    images = list(render_array(scenes, spec))
    inp = proc(
        text=texts,
        images=images,
        return_tensors="pt",
        padding="max_length",
        truncation=True,
        max_length=model.config.text_config.max_position_embeddings,
    )
    img = model.get_image_features(pixel_values=inp["pixel_values"].to(device))
    txt = model.get_text_features(
        input_ids=inp["input_ids"].to(device), attention_mask=inp["attention_mask"].to(device)
    )
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    sim = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    best = sim.argmax(-1).cpu().numpy()
    correct = [texts[b] == texts[i] for i, b in enumerate(best)]
    return {
        "images": len(texts),
        "top1_image_to_caption": float(np.mean(correct)),
        "chance": float(np.mean([sum(t == u for u in texts) / len(texts) for t in texts])),
    }


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    p.add_argument("--t2i", action="append", default=[], help="a pipeline folder (repeatable)")
    p.add_argument("--clip", default=None)
    p.add_argument("--out", required=True, help="JSON report")
    p.add_argument("--grid", default=None, help="PNG grid of samples from the first pipeline")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    log = setup_logging()
    params = load_params(args.params)
    spec = WorldSpec.from_config(params["shapes"])
    b = params["benchmark"]
    device = pick_device(args.device)
    scenes = split_scenes(params["shapes"], "eval")[: b["n_images"]]
    captions = eval_captions(scenes, b["seed"])
    report: dict = {"n_images": len(scenes), "sampler_steps": b["sampler_steps"], "seed": b["seed"], "t2i": {}}
    clip = ClipFeatures(args.clip, device) if args.clip else None
    for k, path in enumerate(args.t2i):
        log.info("rendering %d captions with %s", len(captions), path)
        pipe = load_t2i_pipeline(path, device)
        steps, seed = b["sampler_steps"], b["seed"]
        rep, renders = t2i_report(pipe, scenes, captions, spec, b["guidance_scales"], steps, seed)
        report["t2i"][path] = rep
        g = max(b["guidance_scales"])
        report.setdefault("position_check", {})[path] = position_check(
            pipe, scenes, spec, g, steps, seed, clip, true_renders=renders[f"cfg{g:g}"]
        )
        if k == 0 and args.grid:
            save_image_grid(args.grid, {"original": render_array(scenes[:8], spec), **renders}, column_titles=captions)
    if args.clip:
        report["clip"] = {args.clip: clip_retrieval(args.clip, scenes, spec, device)}
    report["run"] = build_manifest("evaluate_standins", params, None)["run"]  # machine, date, revision
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return 0


def format_report(report: dict) -> str:
    lines = [f"{'model':44s} {'setting':20s} {'colour':>7s} {'col+shape':>9s} {'cell|match':>10s} {'size|match':>10s}"]
    for path, rep in report.get("t2i", {}).items():
        for setting, m in rep.items():
            lines.append(
                f"{path[-44:]:44s} {setting:20s} {m['colour_recall']:7.1%} {m['colour_shape_recall']:9.1%} "
                f"{m['cell_accuracy_of_matched']:10.1%} {m['size_accuracy_of_matched']:10.1%}"
            )
    for path, m in report.get("position_check", {}).items():
        d = m.get("clip_sq_distance_to_originals", {})
        lines.append(
            f"{path[-44:]:44s} {'positions moved':20s} right cell: true {m['true']['cell_accuracy_of_matched']:.1%}, "
            f"moved {m['moved']['cell_accuracy_of_matched']:.1%} (in the old cells "
            f"{m['moved_drawn_in_the_original_cells']:.1%})"
            + (f"; CLIP distance to the originals: true {d['true']:.1f}, moved {d['moved']:.1f}" if d else "")
        )
    for path, m in report.get("clip", {}).items():
        lines.append(
            f"{path[-44:]:44s} {'retrieval top-1':20s} {m['top1_image_to_caption']:7.1%}  (chance {m['chance']:.1%})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
