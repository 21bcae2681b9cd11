"""A pixel-space stand-in for the Stable Diffusion VAE: space-to-depth in, depth-to-space out.

The toy T2I pipeline diffuses in pixel space folded 2x2 into channels (32x32x3 -> 16x16x12),
which made tiny-UNet steps about 4x cheaper than full resolution at equal quality
(shared/reference/toy-world-facts.md). The class speaks the ``AutoencoderKL`` interface the
pipeline and the training code use (``encode(x).latent_dist``, ``decode(z).sample``,
``config.scaling_factor``), so the paper profile's real VAE goes through the same code.
It has no weights. diffusers resolves it from ``sys.modules`` when a pipeline folder names it, so
``import vlv.models`` before ``StableDiffusionPipeline.from_pretrained(folder)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin


class PixelUnshuffleAutoencoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        factor: int = 2,
        scaling_factor: float = 1.0,
        latent_channels: int | None = None,
        block_out_channels: list[int] | None = None,
        force_upcast: bool = False,
        shift_factor: float | None = None,
    ):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"factor must be a power of two, got {factor}")
        # The pipeline reads these AutoencoderKL fields; they follow from in_channels and factor.
        # It derives its vae_scale_factor as 2 ** (len(block_out_channels) - 1).
        self.register_to_config(
            latent_channels=in_channels * factor * factor,
            block_out_channels=[in_channels] * factor.bit_length(),
        )
        # One saved buffer gives the module a weights file to load and a device for the pipeline.
        self.register_buffer("anchor", torch.zeros(1))

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        z = F.pixel_unshuffle(x, self.config.factor)
        # log-variance -30 (diffusers' floor): a posterior with std 3e-7, so that one rebuilt from
        # cached parameters is as good as deterministic too.
        logvar = torch.full_like(z, -30.0)
        dist = DiagonalGaussianDistribution(torch.cat([z, logvar], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        x = F.pixel_shuffle(z, self.config.factor)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict=return_dict)
