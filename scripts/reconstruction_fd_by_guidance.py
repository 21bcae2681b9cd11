"""Why the stage-1 reconstructions' FD-toyCLIP rises with guidance (toy profile, after `all`).

For each guidance scale of `reconstruct`, beside each other: the FD-toyCLIP of the reconstructions
(read from `reconstructions.tar`) and of the decoder's own samples from the true caption (sampled
again here with `reconstruct`'s seeds) against the originals, the share of pixels that are not
background, and the mean signed size error of the objects found (colour+shape, share of the image
side; the `mean_scale_bias` of `metrics.json`). Prints one table; about a minute on 2 CPU cores.

    HF_HUB_OFFLINE=1 python scripts/reconstruction_fd_by_guidance.py [--reconstruct results/reconstruct/encoder]
"""

from __future__ import annotations

import argparse

import numpy as np

from vlv.config import load_config
from vlv.data.shards import ShardIndex, decode_image, iter_shard, load_images
from vlv.evaluate.evaluate_fid import feature_space, frechet_distance
from vlv.models.frozen_decoder import FrozenT2IDecoder, encoder_route
from vlv.models.vlv_encoder import VLVEncoder
from vlv.shapes.world import Scene, WorldSpec
from vlv.stages.reconstruct import detector_scores, sample_all


def object_area(images: np.ndarray, background) -> float:
    """Share of pixels farther than 30 (summed over channels) from the background colour."""
    return float((np.abs(images.astype(np.int32) - np.asarray(background)).sum(-1) > 30).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=["config.yaml"])
    p.add_argument("--encoder", default="results/distill_stage1/encoder")
    p.add_argument("--reconstruct", default="results/reconstruct/encoder")
    p.add_argument("--images", default="results/generate_shapes/eval")
    a = p.parse_args()
    cfg = load_config(*a.config)
    s1, spec = cfg["stage1"], WorldSpec.from_config(cfg["shapes"])
    enc = VLVEncoder.from_pretrained(a.encoder)
    dec = FrozenT2IDecoder(cfg["models"]["t2i"], route=encoder_route(enc, s1["route"]))
    keys, images, metas = load_images(a.images, ShardIndex(a.images).keys[: s1["n_eval_images"]])
    scenes = [Scene.from_json(m["scene"]) for m in metas]
    caption_cond = dec.encode_text([m["captions"][0] for m in metas])
    recon = {
        k: np.asarray(decode_image(parts["png"])) for k, parts in iter_shard(f"{a.reconstruct}/reconstructions.tar")
    }
    _, feature = feature_space("toy", cfg["models"]["clip"], None)
    seed = int(s1["seed"])

    print(f"originals: object area {object_area(images, spec.background):.3f}")
    print(
        f"{'guidance':>8} | {'FD recon':>8} {'FD bound':>8} | {'area recon':>10} {'bound':>6} | {'bias recon':>10} {'bound':>6}"
    )
    for g in s1["reconstruct_guidance"]:
        r = np.stack([recon[f"{k}-cfg{g:g}".replace(".", "p")] for k in keys])
        b = sample_all(dec, caption_cond, g, s1["reconstruct_steps"], seed)
        fd = [frechet_distance(feature, images, x) for x in (r, b)]
        area = [object_area(x, spec.background) for x in (r, b)]
        bias = [detector_scores(scenes, x, spec)["mean_scale_bias"] for x in (r, b)]
        print(f"{g:8g} | {fd[0]:8.2f} {fd[1]:8.2f} | {area[0]:10.3f} {area[1]:6.3f} | {bias[0]:10.4f} {bias[1]:6.4f}")


if __name__ == "__main__":
    main()
