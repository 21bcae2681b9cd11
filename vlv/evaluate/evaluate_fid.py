"""Caption -> image distance per guidance scale: Fréchet distance between renders and the originals.

Toy profile: features from the toy CLIP's image tower, reported as ``FD-toyCLIP`` (never "FID").
Paper profile: the standard Inception FID, on the pool features of TensorFlow's Inception-v3
(``vlv.models.inception``: NVIDIA's TorchScript of the 2015-12-05 graph, ``--inception-weights``,
fetched by rule download; a missing file is a clear error saying where to put it).
Both go through torchmetrics' ``FrechetInceptionDistance`` with the feature module passed in.

Example:
    python -m vlv.evaluate.evaluate_fid --params "$(python -m vlv.config evaluation)" --clip models/toy/clip \
        --images results/generate_shapes/eval --renders results/render_captions/vlv_pairs100.tar \
        --out results/evaluate/fid/vlv_pairs100.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.data.shards import ShardIndex, decode_image, iter_batches, iter_shard
from vlv.evaluate.render_captions import render_key
from vlv.manifest import build_manifest, write_manifest
from vlv.training import pick_device

BATCH = 256  # images per feature batch (the toy's 200 evaluation images: one)


def nchw(images) -> torch.Tensor:
    """uint8 NxHxWx3 (an array or a list of HxWx3) -> the NCHW uint8 tensor torchmetrics takes."""
    return torch.from_numpy(np.stack(images) if isinstance(images, list) else images).permute(0, 3, 1, 2).contiguous()


def frechet_distance(feature: torch.nn.Module, real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between two uint8 NxHxWx3 image sets in ``feature``'s embedding space."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fd = FrechetInceptionDistance(feature=feature, normalize=False)
    fd.update(nchw(real), real=True)
    fd.update(nchw(fake), real=False)
    return float(fd.compute())


def feature_space(
    profile: str,
    clip: str | None,
    inception_weights: str | None,
    device: str | torch.device = "cpu",
    inception_sha256: str | None = None,
) -> tuple[str, torch.nn.Module]:
    """(name of the metric, feature module) for the profile; the Inception file is checked against
    ``inception_sha256`` where given."""
    if profile == "toy":
        from vlv.models.clip_features import ClipFeatures

        return "FD-toyCLIP", ClipFeatures(clip)
    from vlv.models.inception import InceptionFeatures

    if not inception_weights:
        raise SystemExit("the paper profile's FID needs --inception-weights (config models.inception)")
    return "FID", InceptionFeatures(inception_weights, device, sha256=inception_sha256)


def distances_per_guidance(feature, images: str, renders: str, keys: list[str], guidances: list[float]) -> dict:
    """The Fréchet distance of each guidance's renders against the originals ``keys`` (the split's
    first images), streamed: the originals once (their statistics kept across guidances), then each
    guidance's renders in one pass over the tar; at most ``BATCH`` images in memory. A missing
    render stops it."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fd = FrechetInceptionDistance(feature=feature, normalize=False, reset_real_features=False)
    seen = 0
    for batch_keys, originals, _ in iter_batches(images, BATCH):
        take = min(len(batch_keys), len(keys) - seen)
        fd.update(nchw(originals[:take]), real=True)
        seen += take
        if seen == len(keys):
            break
    out = {}
    for g in guidances:
        names = {render_key(k, g) for k in keys}
        found, batch = 0, []
        for name, parts in iter_shard(renders):
            if name in names:
                found += 1
                batch.append(np.asarray(decode_image(parts["png"])))
                if len(batch) == BATCH:
                    fd.update(nchw(batch), real=False)
                    batch = []
        if found < len(names):
            raise SystemExit(f"{renders} lacks renders at guidance {g} for {len(names) - found} images")
        if batch:
            fd.update(nchw(batch), real=False)
        out[f"{g:g}"] = float(fd.compute())
        fd.reset()  # the fake statistics only (reset_real_features=False)
    return out


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    p.add_argument("--profile", default="toy", choices=["toy", "paper"])
    p.add_argument("--clip", default=None)
    p.add_argument("--inception-weights", default=None, help="Inception-v3 TorchScript file (paper profile)")
    p.add_argument("--inception-sha256", default=None, help="its pinned SHA-256 (config data.files), checked at load")
    p.add_argument("--device", default="auto")
    p.add_argument("--images", required=True, help="the original evaluation images")
    p.add_argument("--renders", required=True, help="render_captions tar")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    log = setup_logging()
    cfg = load_params(args.params)
    device = pick_device(args.device)
    metric, feature = feature_space(args.profile, args.clip, args.inception_weights, device, args.inception_sha256)
    keys = ShardIndex(args.images).keys[: cfg["n_images"]]
    result = {"metric": metric, "images": len(keys), "guidance": {}}
    if hasattr(feature, "description"):  # the paper profile's Inception names its features
        result["features"] = feature.description
    result["guidance"] = distances_per_guidance(feature, args.images, args.renders, keys, cfg["renderer_guidance"])
    for g, value in result["guidance"].items():
        log.info("%s at guidance %s: %.3f", metric, g, value)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_manifest(
        out.with_suffix(".manifest.json"),
        build_manifest(
            "evaluate_fid",
            cfg,
            cfg["seed"],
            renders=args.renders,
            feature=args.clip if args.profile == "toy" else args.inception_weights,
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
