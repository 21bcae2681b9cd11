"""Load a text-to-image pipeline folder and render captions with it (toy or paper profile)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import pixel_autoencoder  # noqa: F401  (diffusers resolves the toy VAE class from sys.modules)
from .hub import require_local

# Pipeline classes the stages load (model_index.json's _class_name): SD 1/2-style (the stage-1 decoder,
# the toy renderer) and SD-3/3.5 (the paper's evaluation renderer, stabilityai/stable-diffusion-3.5-medium).
PIPELINES = ("StableDiffusionPipeline", "StableDiffusion3Pipeline")


def pipeline_class(folder: str | os.PathLike) -> str:
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise SystemExit(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    return json.loads(index.read_text())["_class_name"]


def load_t2i_pipeline(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    import diffusers

    path = require_local(path, "text-to-image pipeline")
    kind = pipeline_class(path)
    if kind not in PIPELINES:
        raise SystemExit(f"{path}: a {kind}; the renderer and the stage-1 decoder load one of {', '.join(PIPELINES)}")
    if kind == "StableDiffusionPipeline":
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            path, safety_checker=None, requires_safety_checker=False, dtype=dtype
        )
    else:
        pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(path, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def denoiser(pipe):
    """The pipeline's noise (or flow) predictor: SD's UNet or SD-3's transformer."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


@torch.no_grad()
def iter_renders(pipe, captions: list[str], guidance: float, steps: int, seed: int, batch_size: int = 64):
    """(start, uint8 BxHxWx3 renders) a batch at a time; image i uses noise seeded by (seed, i),
    whatever the batching, so a caller can write them out as they come."""
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(seed * 100_003 + start + i) for i in range(len(chunk))]
        net = denoiser(pipe)
        side = net.config.sample_size  # latent side (SD-3: the transformer's default, 128 = 1024 px)
        h = side * pipe.vae_scale_factor
        latents = torch.stack([torch.randn((net.config.in_channels, side, side), generator=g) for g in gens]).to(
            pipe.device, net.dtype
        )
        imgs = pipe(
            chunk,
            height=h,
            width=h,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=latents,
            output_type="np",
        ).images
        yield start, (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8)


def render_captions(
    pipe,
    captions: list[str],
    guidance: float,
    steps: int,
    seed: int,
    batch_size: int = 64,
) -> np.ndarray:
    """uint8 NxHxWx3 renders, all in memory (``iter_renders`` streams them)."""
    return np.concatenate([b for _, b in iter_renders(pipe, captions, guidance, steps, seed, batch_size)])


def denoising_loss(
    unet,
    scheduler,
    latents: torch.Tensor,
    cond: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    per_sample: bool = False,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between the UNet's prediction and the scheduler's target (epsilon, or v for v-prediction):
    the batch's mean, or with ``per_sample`` each sample's; ``weight`` (broadcast to the latents)
    weighs each element's squared error."""
    t = timesteps.to(latents.device)
    noise = noise.to(latents.device, latents.dtype)
    noisy = scheduler.add_noise(latents, noise, t)
    target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype)).sample
    if weight is not None:
        err = (pred.float() - target.float()).pow(2) * weight.to(pred.device, torch.float32)
        return err.flatten(1).mean(1) if per_sample else err.mean()
    if per_sample:
        return (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return F.mse_loss(pred.float(), target.float())
