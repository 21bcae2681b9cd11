"""Captioner arena (the paper's Table 2): each caption's level on the paper's 0-6 rubric.

Judges (``--params``: the ``arena`` config section):
- ``shapes_judge`` (toy): exact. The Shapes parser reads the caption, compares it with the scene graph
  and maps coverage, hallucinations (invented objects, false relations, wrong positions, a wrong
  count) and layout onto the rubric's levels (``vlv.shapes.judge.RUBRIC``).
- ``local`` (an open VLM through transformers) or ``api`` (an OpenAI-compatible endpoint; the paper
  used Gemini 2.0 Flash; a key in the environment variable ``arena.api.key_env``): the judge sees
  the image, the caption and the paper's rubric (Appendix D), explains briefly, then ends with one
  integer; the last integer 0-6 of its reply is the rating. A reply without one is kept, unrated,
  in the output (``unrated``) and left out of the mean. ``arena.n_images`` rates a seeded sample of
  the captioned images (paper: 200).

Example:
    python -m vlv.evaluate.evaluate_arena --params "$(python -m vlv.config arena)" --images results/generate_shapes/eval \
        --captions results/caption/vlv_pairs100.jsonl --out results/evaluate/arena/vlv_pairs100.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from vlv.cli_common import load_params
from vlv.data.shards import iter_dir
from vlv.evaluate.evaluate_captions_shapes import read_captions
from vlv.manifest import build_manifest, write_manifest
from vlv.shapes.judge import RUBRIC, arena_rating, score_caption
from vlv.shapes.world import Scene
from vlv.training import pick_device

JUDGE_PROMPT = """You are rating how well a caption describes this image.

Caption: "{caption}"

Rate it from 0 to 6:
{rubric}
Wrong or ambiguous spatial relations count as hallucinations; omitting an obvious relation lowers
coverage. First give a brief explanation, then, on the last line, the rating as a single integer."""


def judge_prompt(caption: str) -> str:
    rubric = "\n".join(f"{level}: {text}" for level, text in sorted(RUBRIC.items(), reverse=True))
    return JUDGE_PROMPT.format(caption=caption, rubric=rubric)


def parse_rating(reply: str) -> int | None:
    """The last integer 0-6 standing alone in the judge's reply (its rating), or None; the scale's
    maximum in "4/6" or "4 out of 6" is not a rating."""
    found = re.findall(r"(?<![\d./])(?<!out of )([0-6])(?!\d)(?!\.\d)", reply)
    return int(found[-1]) if found else None


def make_judge(cfg: dict, device):
    """The VLM judge of ``arena.judge`` local or api: ``ask(images, prompts) -> replies``."""
    from vlv.models.captioners import APICaptioner, LocalVLM, api_settings

    if cfg["judge"] == "local":
        vlm = LocalVLM(cfg["model"], "", cfg["max_new_tokens"], device, batch_size=cfg["batch_size"])
        return vlm.name, vlm.generate
    if cfg["judge"] == "api":
        settings = api_settings(cfg["api"], cfg["model"], cfg["max_new_tokens"])
        api = APICaptioner(settings, "", "the API arena judge", "arena.judge: local")
        return api.name, lambda images, prompts: [api.ask(im, t) for im, t in zip(images, prompts, strict=True)]
    raise SystemExit(f"unknown arena.judge {cfg['judge']!r} (shapes_judge, local or api)")


def rated_keys(caps: dict[str, str], n: int | None, seed: int) -> list[str]:
    """The captioned keys to rate: all, or a seeded sample of ``n`` (sorted)."""
    keys = sorted(caps)
    if n is None or n >= len(keys):
        return keys
    chosen = np.random.default_rng(seed).choice(len(keys), size=n, replace=False)
    return [keys[i] for i in sorted(chosen)]


def vlm_ratings(cfg: dict, images_dir: str, caps: dict[str, str], device) -> tuple[str, dict, dict]:
    """(judge name, key -> rating, key -> reply) from a VLM judge."""
    from tqdm import tqdm

    from vlv.data.loader import ShardImages
    from vlv.data.shards import ShardIndex

    keys = rated_keys(caps, cfg["n_images"], cfg["seed"])
    index = ShardIndex(images_dir, keys)
    missing = index.missing(keys)
    if missing:
        raise SystemExit(f"{len(missing)} captioned images are not in {images_dir} (e.g. {missing[:3]})")
    images = ShardImages(index)
    name, ask = make_judge(cfg, device)
    ratings, replies = {}, {}
    bs = int(cfg["batch_size"])
    for i in tqdm(range(0, len(index), bs), desc=f"judge {name}", unit="batch", mininterval=5):
        part = index.keys[i : i + bs]
        answers = ask([images[j] for j in range(i, i + len(part))], [judge_prompt(caps[k]) for k in part])
        for k, reply in zip(part, answers, strict=True):
            replies[k] = reply
            level = parse_rating(reply)
            if level is not None:
                ratings[k] = level
    return name, ratings, replies


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", required=True, help="the arena config section as JSON")
    p.add_argument("--images", required=True)
    p.add_argument("--captions", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    cfg = load_params(args.params)
    caps = read_captions(args.captions)
    replies = None
    if cfg["judge"] == "shapes_judge":
        scenes = {k: Scene.from_json(json.loads(parts["json"])["scene"]) for k, parts in iter_dir(args.images)}
        unknown = set(caps) - set(scenes)
        if unknown:
            raise SystemExit(f"{args.captions}: {len(unknown)} keys are not in {args.images}")
        keys = rated_keys(caps, cfg["n_images"], cfg["seed"])
        ratings = {k: arena_rating(score_caption(scenes[k], caps[k])) for k in keys}
        judge = "exact Shapes judge (scene graph + caption parser) on the paper's 0-6 rubric"
    else:
        name, ratings, replies = vlm_ratings(cfg, args.images, caps, pick_device(args.device))
        judge = f"{cfg['judge']} VLM judge {name} on the paper's 0-6 rubric (Appendix D prompt)"
    if not ratings:
        raise SystemExit(f"the judge rated none of the {len(replies or caps)} captions (replies without a rating)")
    counts = Counter(ratings.values())
    result = {
        "judge": judge,
        "captions": len(ratings),
        "mean_rating": float(np.mean(list(ratings.values()))),
        "distribution": {str(level): counts.get(level, 0) for level in sorted(RUBRIC, reverse=True)},
        "ratings": ratings,
    }
    if replies is not None:
        result["unrated"] = {k: r for k, r in replies.items() if k not in ratings}
        result["replies"] = replies
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_manifest(
        out.with_suffix(".manifest.json"),
        build_manifest("evaluate_arena", cfg, cfg["seed"], images=args.images, captions=args.captions),
    )
    print(f"{args.captions}: mean rating {result['mean_rating']:.2f} over {len(ratings)} captions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
