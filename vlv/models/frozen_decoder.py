"""The frozen text-to-image decoder of stage 1: a Stable-Diffusion-format pipeline folder.

Caption embeddings ``z`` (B x N_q x d_CLIP) condition the UNet either through the frozen CLIP text
encoder run on ``inputs_embeds`` (``route="text_encoder"``: position embeddings, causal mask, final
layer norm, exactly what the text model does to token embeddings; the official code's path) or,
skipping its transformer layers, through its final layer norm only (``route="direct"``: the text
model's last operation, so the UNet reads states of the scale it was trained on; on the toy profile
this normalisation alone took reconstructions from 43 to 49 % colour+shape at 900 steps). Every
weight is frozen; gradients flow through to ``z``. The same class loads the toy folder and ``stabilityai/stable-diffusion-2-1-base``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from . import ROUTES, pixel_autoencoder  # noqa: F401  (the toy VAE class must be importable by name)
from .hub import require_local
from .t2i import denoising_loss


def clip_text_from_embeddings(text_encoder, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """``CLIPTextModel``'s last_hidden_state computed from token embeddings instead of token ids."""
    from transformers.masking_utils import create_causal_mask

    hidden = text_encoder.embeddings(inputs_embeds=inputs_embeds)
    mask = create_causal_mask(config=text_encoder.config, inputs_embeds=hidden, attention_mask=None, cache=None)
    out = text_encoder.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
    return text_encoder.final_layer_norm(out.last_hidden_state)


def unet_condition(text_encoder, z: torch.Tensor, route: str) -> torch.Tensor:
    """What the UNet reads for caption embeddings ``z`` along ``route`` (see the module docstring);
    stage 2's captioner reads the same thing."""
    if route == "text_encoder":
        return clip_text_from_embeddings(text_encoder, z)
    if route == "direct":
        return text_encoder.final_layer_norm(z)
    raise ValueError(f"route must be one of {ROUTES}, got {route!r}")


def encoder_route(encoder, route: str | None = None) -> str:
    """The route along which ``encoder``'s embeddings must reach the UNet: the one stage 1 trained it
    on (recorded in its folder). A ``route`` asked for as well must be that one; an encoder folder
    that records none (saved before the route was recorded) needs ``route``."""
    trained = encoder.config.get("route")
    if route is not None and route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    if trained is None:
        if route is None:
            raise ValueError(f"the encoder folder records no route; give the one it was trained on ({ROUTES})")
        return route
    if route is not None and route != trained:
        raise ValueError(
            f"the encoder was trained on route {trained!r}, not {route!r}: its embeddings mean nothing to the UNet "
            f"along another route (set stage1.route: {trained} or retrain stage 1)"
        )
    return trained


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 NxHxWx3 -> float Nx3xHxW in [-1, 1], the VAE's input."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class FrozenT2IDecoder(torch.nn.Module):
    def __init__(self, path: str, route: str = "text_encoder", dtype: torch.dtype = torch.float32):
        super().__init__()
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        from diffusers import DDPMScheduler, StableDiffusionPipeline

        self.path = require_local(path, "text-to-image decoder")
        pipe = StableDiffusionPipeline.from_pretrained(
            self.path, safety_checker=None, requires_safety_checker=False, dtype=dtype
        )
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.text_encoder = pipe.text_encoder
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.tokenizer = pipe.tokenizer
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.route = route
        for m in (self.text_encoder, self.unet, self.vae):
            m.eval()
            m.requires_grad_(False)

    @property
    def embed_dim(self) -> int:
        return self.text_encoder.config.hidden_size

    @property
    def image_size(self) -> int:
        """The side, in pixels, of the images it draws and encodes."""
        return self.unet.config.sample_size * self.pipe.vae_scale_factor

    @property
    def max_tokens(self) -> int:
        return self.text_encoder.config.max_position_embeddings

    def train(self, mode: bool = True):  # the decoder never leaves eval mode
        return super().train(False)

    def store_frozen_in(self, dtype: torch.dtype) -> FrozenT2IDecoder:
        """Store the text encoder and the UNet in ``dtype`` (bf16 for speed). They then compute in it
        with autocast off: their inputs are cast to it, so no pass re-casts fp32 weights, and the
        gradient still flows back to the caption embeddings (in their own dtype). The VAE stays as it
        is (its latents are cached)."""
        self.text_encoder.to(dtype)
        self.unet.to(dtype)
        return self

    def _frozen_precision(self, x: torch.Tensor):
        """Autocast off where the frozen towers are stored in low precision (see ``store_frozen_in``)."""
        if self.unet.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, enabled=False)

    def condition(self, z: torch.Tensor) -> torch.Tensor:
        """UNet conditioning from caption embeddings, along the configured route."""
        with self._frozen_precision(z):
            te = self.text_encoder
            return unet_condition(te, z if te.dtype == torch.float32 else z.to(te.dtype), self.route)

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.text_encoder.device)).last_hidden_state

    @torch.no_grad()
    def latent_dist(self, images: torch.Tensor):
        """VAE posterior of images in [-1, 1]; sample it (or take its mode) each step."""
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist

    def image_latents(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NxHxWx3 -> the VAE's scaled latents (the posterior's mode), as stage 1 trains on them."""
        return self.latent_dist(to_pixels(images).to(self.unet.device)).mode() * self.vae.config.scaling_factor

    def draw_noise(self, latents: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian noise and uniform timesteps for a batch of latents (drawn on the CPU generator)."""
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        return noise, t

    def diffusion_loss(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        per_sample: bool = False,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoising MSE with the scheduler's target (epsilon for SD 2.1-base, v for the toy): the
        batch's mean, or with ``per_sample`` each sample's; ``weight`` weighs each latent element."""
        with self._frozen_precision(latents):
            return denoising_loss(self.unet, self.noise_scheduler, latents, cond, noise, timesteps, per_sample, weight)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, guidance: float, steps: int, seed: int) -> np.ndarray:
        """uint8 renders from UNet conditioning, classifier-free guidance against the empty prompt."""
        n = cond.shape[0]
        uncond = self.encode_text([""]).expand(n, -1, -1)
        if uncond.shape[1] != cond.shape[1]:  # direct route with N_q != 77 tokens: empty prompt, truncated or padded
            uncond = (
                uncond[:, : cond.shape[1]]
                if uncond.shape[1] > cond.shape[1]
                else F.pad(uncond, (0, 0, 0, cond.shape[1] - uncond.shape[1]))
            )
        size = self.unet.config.sample_size
        gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(n)]
        latents = torch.stack([torch.randn((self.unet.config.in_channels, size, size), generator=g) for g in gens])
        out = self.pipe(
            prompt_embeds=cond.to(self.unet.dtype),
            negative_prompt_embeds=uncond.to(self.unet.dtype),
            guidance_scale=guidance,
            num_inference_steps=steps,
            latents=latents.to(self.unet.device, self.unet.dtype),
            height=size * self.pipe.vae_scale_factor,
            width=size * self.pipe.vae_scale_factor,
            output_type="np",
        ).images
        return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
