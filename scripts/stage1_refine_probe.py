"""Issue 23: what refining the embeddings on each image buys (semi-amortised inference,
`vlv.models.refine`, `stage1.refine_steps`), and how much of it is the encoder's.

For the evaluation images: the trained encoder's embeddings, and as a control the empty caption's,
each refined by K Adam steps of stage 1's loss on the image (K = 0, 3, 10, 30; the config's
`refine_lr` and `refine_draws`), then rendered at guidance 3 with reconstruct's seeds and sampler and
scored by the Shapes detector as reconstruct scores them. If refinement alone did the work, the
control would reach what the encoder's start does. Writes the JSON (with the machine, date and
revision) and prints a table. About 6 minutes on 2 CPU cores (toy, 200 images).

    HF_HUB_OFFLINE=1 python scripts/stage1_refine_probe.py --encoder results/distill_stage1/encoder \\
        --out results/figures/stage1_refine_toy.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vlv.config import load_config, stage_params
from vlv.data.shards import ShardIndex, load_images
from vlv.manifest import build_manifest
from vlv.models.frozen_decoder import FrozenT2IDecoder, encoder_route
from vlv.models.refine import refine
from vlv.models.vlv_encoder import VLVEncoder
from vlv.shapes.world import Scene, WorldSpec
from vlv.stages.diagnose_stage1 import caption_embeddings, shape_scores
from vlv.stages.reconstruct import detector_scores, embed_images, image_latents, sample_all


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=["config.yaml"])
    p.add_argument("--encoder", default="results/distill_stage1/encoder")
    p.add_argument("--images", default="results/generate_shapes/eval")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 3, 10, 30])
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--out", default="results/figures/stage1_refine_toy.json")
    a = p.parse_args()
    cfg = load_config(*a.config)
    s1 = stage_params(cfg, "reconstruct")
    spec, seed = WorldSpec.from_config(cfg["shapes"]), int(s1["seed"])
    encoder = VLVEncoder.from_pretrained(a.encoder)
    dec = FrozenT2IDecoder(cfg["models"]["t2i"], route=encoder_route(encoder, s1["route"]))
    _, images, metas = load_images(a.images, ShardIndex(a.images).keys[: s1["n_eval_images"]])
    scenes = [Scene.from_json(m["scene"]) for m in metas]
    latents = image_latents(dec, images)
    starts = {
        "encoder": embed_images(encoder, images, "cpu"),
        "empty_caption": caption_embeddings(dec, [""] * len(images)),
    }
    record = {
        "machine": build_manifest("stage1_refine_probe", vars(a), seed)["run"],
        "encoder": a.encoder,
        "images": len(images),
        "guidance": a.guidance,
        "refine_lr": s1["refine_lr"],
        "refine_draws": s1["refine_draws"],
        "runs": {},
    }
    for start, z0 in starts.items():
        for k in a.steps:
            t0 = time.time()
            z = refine(dec, latents, z0, k, float(s1["refine_lr"]), int(s1["refine_draws"]), seed)[0]
            seconds = time.time() - t0
            renders = sample_all(dec, dec.condition(z).detach(), a.guidance, s1["reconstruct_steps"], seed)
            det = detector_scores(scenes, renders, spec)
            by_count = shape_scores(scenes, renders, spec)
            record["runs"][f"{start}+{k}"] = {
                "start": start,
                "refine_steps": k,
                "refine_seconds": round(seconds, 1),
                "colour_shape_found": round(det["colour_shape_recall"], 4),
                "cell_right_of_matched": round(det["cell_accuracy_of_matched"], 4),
                "size_right_of_matched": round(det["size_accuracy_of_matched"], 4),
                "shape_right_of_drawn_colours": {c: v["shape_right_of_drawn_colours"] for c, v in by_count.items()},
            }
            Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
            print(f"{start}+{k}: {record['runs'][f'{start}+{k}']}", flush=True)
    print(f"{'start + steps':22s} {'c+s':>6s} {'shape 1/2/3 obj':>16s} {'cell':>6s} {'size':>6s} {'s':>6s}")
    for name, r in record["runs"].items():
        sh = r["shape_right_of_drawn_colours"]
        shapes = "/".join(f"{sh.get(c, float('nan')):.0%}" for c in ("1", "2", "3"))
        print(f"{name:22s} {r['colour_shape_found']:6.1%} {shapes:>16s} {r['cell_right_of_matched']:6.1%} "
              f"{r['size_right_of_matched']:6.1%} {r['refine_seconds']:6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
