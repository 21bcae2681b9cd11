"""Composition (paper section 4.4.2): two images' caption embeddings, truncated and concatenated,
rendered by the frozen decoder.

For a pair of images A and B and a number k of tokens kept from A, the composed embedding is the
first k of A's N_q caption-embedding tokens followed by the first N_q - k of B's (the paper does not
say how many it keeps; we sweep k). k = N_q is A's own reconstruction, k = 0 B's. The same noise
seed per pair for every k. Toy profile: the Shapes detector reads each composition and reports the
share of A's objects and of B's objects (colour and shape) that appear, per k.

Outputs (``--out DIR``): ``compose.json`` (per k: objects of A found, of B found; pairs, guidance),
``grid.png`` (A, B, then the composition at each k), ``manifest.json``.

Example:
    python -m vlv.stages.compose --params '{"pairs": 24, "tokens_from_a": [19, 38, 58], "guidance": 3.0,
        "route": "text_encoder", "steps": 25, "seed": 0}' \
        --encoder results/distill_stage1/encoder --decoder models/toy/t2i \
        --images results/generate_shapes/eval --shapes "$(python -m vlv.config shapes)" --out results/compose
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.data.shards import load_images
from vlv.manifest import build_manifest, write_manifest
from vlv.models.frozen_decoder import FrozenT2IDecoder, encoder_route
from vlv.models.vlv_encoder import VLVEncoder
from vlv.stages.reconstruct import embed_images
from vlv.training import pick_device


def compose_embeddings(z_a: torch.Tensor, z_b: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` tokens of ``z_a`` then the first ``N_q - k`` of ``z_b`` (both ``[n, N_q, d]``)."""
    if z_a.shape != z_b.shape:
        raise ValueError(f"caption embeddings differ in shape: {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    n_q = z_a.shape[1]
    if not 0 <= k <= n_q:
        raise ValueError(f"tokens kept from A must be in 0..{n_q}, got {k}")
    return torch.cat([z_a[:, :k], z_b[:, : n_q - k]], dim=1)


def token_counts(requested: list[int], n_q: int) -> list[int]:
    """The requested k within 0..N_q, plus both ends (B alone, A alone), ascending."""
    return sorted({0, n_q, *(k for k in requested if 0 <= k <= n_q)})


def compose_images(
    encoder: VLVEncoder, dec: FrozenT2IDecoder, a: np.ndarray, b: np.ndarray, ks: list[int], guidance: float,
    steps: int, seed: int, device,
) -> dict[int, np.ndarray]:  # fmt: skip
    """k -> uint8 renders of the compositions of image pairs (a[i], b[i])."""
    out = {}
    with torch.no_grad():
        z_a, z_b = embed_images(encoder, a, device), embed_images(encoder, b, device)
        for k in ks:
            out[k] = dec.sample(dec.condition(compose_embeddings(z_a, z_b, k)), guidance, steps, seed)
    return out


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    p.add_argument("--encoder", required=True, help="a distill_stage1 output folder")
    p.add_argument("--decoder", required=True, help="the frozen T2I pipeline")
    p.add_argument("--images", required=True, help="evaluation shards (pairs: images 0+1, 2+3, ...)")
    p.add_argument("--shapes", default=None, help="the Shapes world config as JSON (toy: detector scores)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    log = setup_logging()
    cfg = load_params(args.params)
    device = pick_device(args.device)
    encoder = VLVEncoder.from_pretrained(args.encoder).to(device)
    dec = FrozenT2IDecoder(args.decoder, route=encoder_route(encoder, cfg["route"])).to(device)
    keys, images, metas = load_images(args.images)
    n = min(cfg["pairs"], len(images) // 2)
    if n == 0:
        raise SystemExit(f"{args.images}: composition needs at least two images")
    a, b = images[0 : 2 * n : 2], images[1 : 2 * n : 2]
    n_q = encoder.config["num_queries"]
    ks = token_counts(cfg["tokens_from_a"], n_q)
    log.info("composing %d pairs at k = %s of %d tokens, guidance %g", n, ks, n_q, cfg["guidance"])
    renders = compose_images(encoder, dec, a, b, ks, cfg["guidance"], cfg["steps"], cfg["seed"], device)
    result: dict = {"pairs": n, "num_queries": n_q, "guidance": cfg["guidance"], "steps": cfg["steps"], "by_k": {}}
    if args.shapes:
        from vlv.shapes.world import Scene, WorldSpec
        from vlv.stages.reconstruct import detector_scores

        spec = WorldSpec.from_config(json.loads(args.shapes))
        scenes = [Scene.from_json(m["scene"]) for m in metas[: 2 * n]]
        scenes_a, scenes_b = scenes[0::2], scenes[1::2]
        for k in ks:
            result["by_k"][str(k)] = {
                "tokens_from_a": k,
                "tokens_from_b": n_q - k,
                "objects_of_a_found": detector_scores(scenes_a, renders[k], spec)["colour_shape_recall"],
                "objects_of_b_found": detector_scores(scenes_b, renders[k], spec)["colour_shape_recall"],
            }
            log.info("k=%d: objects of A found %.1f %%, of B %.1f %%", k,
                     100 * result["by_k"][str(k)]["objects_of_a_found"],
                     100 * result["by_k"][str(k)]["objects_of_b_found"])  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compose.json").write_text(json.dumps(result, indent=2) + "\n")
    from vlv.figures import save_image_grid

    rows = {"A": a, "B": b, **{f"{k} of A + {n_q - k} of B": renders[k] for k in ks}}
    save_image_grid(out / "grid.png", rows, title="composition: the first k tokens of A, then B's")
    write_manifest(
        out / "manifest.json",
        build_manifest(
            "compose",
            cfg,
            cfg["seed"],
            device=str(device),
            encoder=args.encoder,
            decoder=args.decoder,
            images=args.images,
            keys=keys[: 2 * n],
        ),  # fmt: skip
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
