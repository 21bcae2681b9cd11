"""Reconstruct held-out images through the VLV encoder and the frozen decoder, and score them.

For the evaluation images: image -> caption embeddings -> image at each guidance scale (fixed
seeds), beside the decoder's own samples from the true caption (the upper bound) and from the
empty caption (the floor), all with the same noise. Reports:
- the held-out denoising loss at fixed timesteps for the embeddings, the true caption and the empty
  caption (same images, noise and timesteps for the three);
- with the Shapes detector (toy): the share of original objects whose colour and shape reappear,
  the cell accuracy and the mean centre error, per guidance scale, for reconstruction, bound, floor.

With ``stage1.refine_steps`` > 0 the encoder's embeddings are first refined on each image
(``vlv.models.refine``); the denoising loss above then measures a fit to these images, not what
the encoder alone carries to images it has not seen.

Outputs (``--out DIR``): ``metrics.json``, ``grid.png`` (originals beside reconstructions) and
``reconstructions.tar`` (``<key>-cfg<g>.png`` per image and guidance, for later evaluation).

Example:
    python -m vlv.stages.reconstruct --params "$(python -m vlv.config reconstruct)" --encoder results/distill_stage1/encoder \
        --decoder models/toy/t2i --images results/generate_shapes/eval --out results/reconstruct/encoder
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.data.shards import ShardIndex, encode_png, load_images, write_shard
from vlv.figures import save_image_grid
from vlv.manifest import build_manifest, write_manifest
from vlv.models.frozen_decoder import FrozenT2IDecoder, encoder_route
from vlv.models.refine import Refiner
from vlv.models.vlv_encoder import VLVEncoder
from vlv.training import pick_device


@torch.no_grad()
def embed_images(encoder: VLVEncoder, images: np.ndarray, device, batch: int = 64) -> torch.Tensor:
    return torch.cat(
        [encoder(encoder.preprocess(images[i : i + batch]).to(device)) for i in range(0, len(images), batch)]
    )


@torch.no_grad()
def sample_all(dec: FrozenT2IDecoder, cond: torch.Tensor, guidance: float, steps: int, seed: int, batch: int = 64):
    """Renders of every conditioning row, in batches whose noise is seeded by their first row's index
    (so a row gets the same noise whatever else is sampled)."""
    return np.concatenate(
        [dec.sample(cond[i : i + batch], guidance, steps, seed + i) for i in range(0, len(cond), batch)]
    )


@torch.no_grad()
def image_latents(dec: FrozenT2IDecoder, images: np.ndarray) -> torch.Tensor:
    """uint8 NxHxWx3 -> the VAE's scaled latents (the distribution's mode), as stage 1 trains on them."""
    return dec.image_latents(torch.from_numpy(images))


def denoising_losses(
    dec: FrozenT2IDecoder, images: np.ndarray, conds: dict[str, torch.Tensor], timesteps: list[int], seed: int
) -> dict:
    """Mean denoising loss per condition and timestep; every condition sees the same noise."""
    latents = image_latents(dec, images)
    out: dict = {name: {} for name in conds}
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed * 1000 + t))
        ts = torch.full((len(latents),), t, dtype=torch.long)
        for name, cond in conds.items():
            losses = [
                dec.diffusion_loss(latents[i : i + 64], cond[i : i + 64], noise[i : i + 64], ts[i : i + 64]).item()
                * len(latents[i : i + 64])
                for i in range(0, len(latents), 64)
            ]
            out[name][str(t)] = sum(losses) / len(latents)
    gap = {}
    for t in map(str, timesteps):
        empty, caption = out["empty_caption"][t], out["true_caption"][t]
        gap[t] = (empty - out["reconstruction"][t]) / (empty - caption) if empty != caption else None
    out["share_of_empty_to_caption_gap_closed"] = gap
    return out


def refine_for_images(dec: FrozenT2IDecoder, images: np.ndarray, z: torch.Tensor, cfg: dict, seed: int):
    """The encoder's embeddings ``z`` of ``images`` refined by ``stage1.refine_*`` (vlv.models.refine),
    and what it did: its settings, seconds and the loss at its first and last steps."""
    refiner = Refiner(dec, cfg["refine_steps"], cfg["refine_lr"], cfg["refine_draws"], seed)
    t0 = time.time()
    z, losses = refiner.refine_images(images, z)
    settings = {k: v for k, v in refiner.settings().items() if k != "seed"}
    return z, {**settings, "seconds": round(time.time() - t0, 1), **losses}


def detector_scores(scenes, renders: np.ndarray, spec) -> dict:
    """The detector's summary of the renders, with its breakdown by object count (``by_objects``)."""
    from vlv.shapes.detect import by_object_count, detect, score_scene, summarise

    scores = [score_scene(s, detect(im, spec), spec) for s, im in zip(scenes, renders, strict=True)]
    return {**summarise(scores), "by_objects": by_object_count(scores)}


def render_all(dec: FrozenT2IDecoder, conds: dict, guidance: list[float], steps: int, seed: int) -> dict:
    """The renders of the grid: the reconstructions and the true captions' (the bound) at each guidance
    scale, and the empty caption's (the floor) at guidance 1; keyed as the grid's rows."""
    renders: dict[str, np.ndarray] = {}
    for g in guidance:
        logging.getLogger("vlv").info("sampling %d reconstructions and bounds at guidance %g", len(conds["recon"]), g)
        renders[f"recon cfg{g:g}"] = sample_all(dec, conds["recon"], g, steps, seed)
        renders[f"caption cfg{g:g}"] = sample_all(dec, conds["caption"], g, steps, seed)
    renders["empty caption"] = sample_all(dec, conds["empty caption"], 1.0, steps, seed)
    return renders


def shapes_detector(shapes: dict, metas: list[dict], renders: dict, guidance: list[float]) -> dict:
    """The Shapes detector's scores of every row of renders against the scene graphs, and for each
    guidance the share of the floor-to-bound gap the reconstructions close."""
    from vlv.shapes.world import Scene, WorldSpec

    spec = WorldSpec.from_config(shapes)
    scenes = [Scene.from_json(m["scene"]) for m in metas]
    scores = {name: detector_scores(scenes, r, spec) for name, r in renders.items()}
    for g in guidance:
        r, b, f = (scores[k]["colour_shape_recall"] for k in (f"recon cfg{g:g}", f"caption cfg{g:g}", "empty caption"))
        scores[f"recon cfg{g:g}"]["share_of_floor_to_bound_closed"] = (r - f) / (b - f) if b != f else None
    return scores


def save_renders(out: Path, keys: list[str], images: np.ndarray, renders: dict, guidance: list[float]) -> None:
    """grid.png (the originals above every row of renders) and reconstructions.tar (each guidance's)."""
    save_image_grid(
        out / "grid.png",
        {"original": images, **renders},
        title="VLV reconstructions: image -> caption embeddings -> frozen decoder",
    )
    write_shard(
        out / "reconstructions.tar",
        (
            (f"{k}-cfg{g:g}".replace(".", "p"), {"png": encode_png(renders[f"recon cfg{g:g}"][i])})
            for g in guidance
            for i, k in enumerate(keys)
        ),
    )


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    p.add_argument("--encoder", required=True)
    p.add_argument("--decoder", required=True)
    p.add_argument("--images", required=True, help="evaluation shards (with scene graphs for the toy scores)")
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", default=None, help="the Shapes world config as JSON (toy profile: detector scores)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    log = setup_logging()
    cfg = load_params(args.params)
    device = pick_device(args.device)
    encoder = VLVEncoder.from_pretrained(args.encoder).to(device)
    dec = FrozenT2IDecoder(args.decoder, route=encoder_route(encoder, cfg["route"])).to(device)
    # only the first n_eval_images are decoded (the paper's evaluation split holds 30K at 512 px)
    keys, images, metas = load_images(args.images, ShardIndex(args.images).keys[: cfg["n_eval_images"]])
    captions = [m["captions"][0] if m.get("captions") else "" for m in metas]
    seed = int(cfg["seed"])

    z = embed_images(encoder, images, device)
    refined = None
    if cfg["refine_steps"]:
        z, refined = refine_for_images(dec, images, z, cfg, seed)
        log.info("refined the embeddings: %d steps in %.1f s", cfg["refine_steps"], refined["seconds"])
    with torch.no_grad():
        recon_cond = dec.condition(z)
    caption_cond = dec.encode_text(captions)
    empty_cond = dec.encode_text([""] * len(images))
    metrics: dict = {
        "images": len(images),
        "route": cfg["route"],
        "sampler_steps": cfg["reconstruct_steps"],
        "seed": seed,
        # the embeddings refined on these very images (stage1.refine_steps), or the encoder's as they are
        "refine": refined,
    }
    if recon_cond.shape[1] == caption_cond.shape[1]:
        conds = {"reconstruction": recon_cond, "true_caption": caption_cond, "empty_caption": empty_cond}
        metrics["denoising_loss"] = denoising_losses(dec, images, conds, cfg["eval_timesteps"], seed)
    else:
        log.warning(
            "denoising-loss comparison needs %d tokens, the embeddings have %d",
            caption_cond.shape[1],
            recon_cond.shape[1],
        )

    conds = {"recon": recon_cond, "caption": caption_cond, "empty caption": empty_cond}
    renders = render_all(dec, conds, cfg["reconstruct_guidance"], cfg["reconstruct_steps"], seed)
    if args.shapes:
        metrics["detector"] = shapes_detector(json.loads(args.shapes), metas, renders, cfg["reconstruct_guidance"])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    save_renders(out, keys, images, renders, cfg["reconstruct_guidance"])
    write_manifest(
        out / "manifest.json",
        build_manifest("reconstruct", cfg, seed, device=str(device), encoder=args.encoder, decoder=args.decoder),
    )
    print(format_metrics(metrics))
    return 0


def format_metrics(m: dict) -> str:
    lines = []
    if "denoising_loss" in m:
        d = m["denoising_loss"]
        lines.append(f"{'t':>5s} {'recon':>9s} {'caption':>9s} {'empty':>9s} {'gap closed':>10s}")
        for t in d["reconstruction"]:
            gap = d["share_of_empty_to_caption_gap_closed"][t]
            lines.append(
                f"{t:>5s} {d['reconstruction'][t]:9.5f} {d['true_caption'][t]:9.5f} {d['empty_caption'][t]:9.5f} {gap if gap is None else f'{gap:10.1%}'}"
            )
    for name, s in m.get("detector", {}).items():
        err = s["mean_center_error_px"]
        lines.append(
            f"{name:16s} colour {s['colour_recall']:6.1%}  colour+shape {s['colour_shape_recall']:6.1%}  cell {s['cell_accuracy_of_matched']:6.1%}  centre err {err if err is None else round(err, 2)} px"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
