"""Issue 23, lever "fixed BOS/padding positions", probed before it is built: does the frozen decoder
read the positions after a caption's end-of-text token?

The lever would learn only the first K of the 77 positions and hold the rest at the empty caption's
states, on the premise that text-to-image models with a frozen text encoder largely ignore padding.
Here the premise is measured on the toy decoder: paired denoising losses (the same noise and
timestep for every condition, as `diagnose_stage1` part (a)) of the true caption against
- the true caption with every position after its end-of-text set to the empty caption's state,
- the true caption's first K positions with the rest the empty caption's (K = 16, 24, 32),
- the empty caption.
If the decoder ignored padding, the first would cost nothing. Route `direct` (the toy's): the
positions are the text model's states before its final layer norm. Writes the JSON (with the machine,
date and revision) and prints a table. About a minute on 2 CPU cores.

    HF_HUB_OFFLINE=1 python scripts/stage1_padding_probe.py --decoder models/toy/t2i \\
        --images results/generate_shapes/eval --out results/figures/stage1_padding_toy.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vlv.data.shards import ShardIndex, load_images
from vlv.manifest import build_manifest
from vlv.models.frozen_decoder import FrozenT2IDecoder
from vlv.shapes.world import Scene
from vlv.stages.diagnose_stage1 import canonical_caption, caption_embeddings, log_snr, loss_table, stratified
from vlv.stages.reconstruct import image_latents

TIMESTEPS = [50, 250, 450, 650, 850, 950]
KEPT = (16, 24, 32)


def conditions(dec: FrozenT2IDecoder, captions: list[str]) -> tuple[dict, dict]:
    """(condition name -> UNet conditioning, facts about the captions' token lengths)."""
    z_true = caption_embeddings(dec, captions)
    z_empty = caption_embeddings(dec, [""] * len(captions))
    n = z_true.shape[1]
    ids = dec.tokenizer(captions, padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
    end = (ids == dec.tokenizer.eos_token_id).int().argmax(1)  # the first end-of-text: the caption's end
    pos = torch.arange(n)[None, :]
    z = {
        "true_caption": z_true,
        "padding_from_empty": torch.where((pos > end[:, None])[..., None], z_empty, z_true),
        **{f"first_{k}_rest_from_empty": torch.where((pos < k)[..., None], z_true, z_empty) for k in KEPT},
        "empty_caption": z_empty,
    }
    lengths = (end + 1).float()
    with torch.no_grad():
        conds = {name: dec.condition(v) for name, v in z.items()}
    return conds, {"tokens_with_bos_eos_mean": round(float(lengths.mean()), 2), "tokens_max": int(lengths.max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", default="models/toy/t2i")
    p.add_argument("--images", default="results/generate_shapes/eval")
    p.add_argument("--per-count", type=int, default=16, help="evaluation images per object count")
    p.add_argument("--draws", type=int, default=4, help="noise draws per image and timestep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/figures/stage1_padding_toy.json")
    args = p.parse_args()
    dec = FrozenT2IDecoder(args.decoder, route="direct")
    _, images, metas = load_images(args.images, ShardIndex(args.images).keys)
    scenes = [Scene.from_json(m["scene"]) for m in metas]
    chosen = stratified(scenes, args.per_count)
    images, scenes = images[chosen], [scenes[i] for i in chosen]
    latents = image_latents(dec, images)
    conds, lengths = conditions(dec, [canonical_caption(s, args.seed) for s in scenes])
    losses = loss_table(dec, latents, conds, TIMESTEPS, args.draws, args.seed)
    gaps = {}
    for name, table in losses.items():
        if name == "true_caption":
            continue
        per_image = (table - losses["true_caption"]).mean(axis=2)  # images x timesteps
        summed = per_image.sum(axis=1)
        gaps[name] = {
            "gap_by_t": [round(float(v), 6) for v in per_image.mean(axis=0)],
            "summed": round(float(summed.mean()), 6),
            "summed_se": round(float(summed.std(ddof=1) / np.sqrt(len(summed))), 6),
        }
    empty = gaps["empty_caption"]["summed"]
    for g in gaps.values():
        g["share_of_empty_gap"] = round(g["summed"] / empty, 4)
    record = {
        "machine": build_manifest("stage1_padding_probe", vars(args), args.seed)["run"],
        "images": len(scenes),
        "draws": args.draws,
        "timesteps": TIMESTEPS,
        "log_snr": log_snr(dec, TIMESTEPS),
        "captions": lengths,
        "gap_to_true_caption": gaps,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(scenes)} images, {args.draws} draws; loss gap to the true caption, summed over t = {TIMESTEPS}")
    for name, g in gaps.items():
        print(
            f"{name:28s} {g['summed']:.4f} (se {g['summed_se']:.4f})  {100 * g['share_of_empty_gap']:5.1f} % of the empty caption's"
        )


if __name__ == "__main__":
    main()
