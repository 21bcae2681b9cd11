"""Semi-amortised inference (Kim et al. 2018, "Semi-Amortized Variational Autoencoders"): the
encoder's caption embeddings of an image refined by a few Adam steps of stage 1's own loss on that
image, through the frozen decoder. Nothing of the decoder or the encoder trains; only the
embeddings move.

The encoder hedges where its training signal is weak (shape and size, docs/experiments.md: "Where
the signal is"); the decoder's loss on the image itself settles that in a few steps from the
encoder's output, and does not from the empty caption's (measured there). ``stage1.refine_steps``
switches it on wherever the encoder's embeddings are used: ``reconstruct`` renders the refined
embeddings, and a VLV captioner (stage 2 and captioning) reads them through a ``Refiner``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vlv.data.shards import square_crop

REFINE_BATCH = 64  # images refined together (each has its own Adam state; the chunk only shares the noise draw)


def refine(
    dec,
    latents: torch.Tensor,
    z0: torch.Tensor,
    steps: int,
    lr: float,
    draws: int,
    seed: int,
    snapshots=(),
    batch: int = REFINE_BATCH,
) -> tuple[torch.Tensor, dict, dict]:
    """Embeddings ``z0`` of the images whose VAE latents are ``latents``, each moved by ``steps`` Adam
    steps (``lr``) on the denoising loss of ``draws`` uniform timesteps and noises per image and step.
    Chunks of ``batch`` images; chunk k's draws come from a generator seeded ``seed + k * batch``, so the
    same images in the same order give the same embeddings. Returns the embeddings, the mean loss of
    the first and of the last tenth of the steps, and {step: the embeddings after it} for each of
    ``snapshots``."""
    if steps <= 0:
        return z0.detach(), {}, {}
    with torch.enable_grad():  # also under the no_grad of captioning
        return _refine(dec, latents, z0, steps, lr, draws, seed, snapshots, batch)


def _refine(dec, latents, z0, steps, lr, draws, seed, snapshots, batch):
    out, first, last, taken = [], [], [], {s: [] for s in snapshots}
    for start in range(0, len(latents), batch):
        z, seen, shots = _refine_chunk(
            dec, latents[start : start + batch], z0[start : start + batch], steps, lr, draws, seed + start, snapshots
        )
        out.append(z)
        tenth = max(1, steps // 10)
        first.append(np.mean(seen[:tenth]))
        last.append(np.mean(seen[-tenth:]))
        for s in snapshots:
            taken[s].append(shots[s])
    record = {"loss_first": float(np.mean(first)), "loss_last": float(np.mean(last))}
    return torch.cat(out), record, {s: torch.cat(v) for s, v in taken.items() if v}


def _refine_chunk(dec, latents, z0, steps, lr, draws, seed, snapshots):
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    g = torch.Generator().manual_seed(seed)
    n, total = len(latents), dec.noise_scheduler.config.num_train_timesteps
    seen, shots = [], {}
    for _ in tqdm(range(steps), desc="refining embeddings", leave=False):
        t = torch.randint(0, total, (draws * n,), generator=g).to(latents.device)
        noise = torch.randn((draws * n, *latents.shape[1:]), generator=g).to(latents.device)
        # the mean over the chunk: Adam's steps do not depend on the loss's scale, and each
        # embedding's gradient comes from its own image's terms only
        loss = dec.diffusion_loss(latents.repeat(draws, 1, 1, 1), dec.condition(z).repeat(draws, 1, 1), noise, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen.append(loss.item())
        if len(seen) in snapshots:
            shots[len(seen)] = z.detach().clone()
    return z.detach(), seen, shots


class Refiner:
    """A VLV captioner's refinement: the frozen decoder stage 1 was trained through and the
    ``stage1.refine_*`` settings; called on a batch's images and the encoder's embeddings of them.
    Each call draws from ``seed`` (chunk by chunk, as ``refine``), so the same batch gives the same
    embeddings. Not a torch module: the decoder is no part of the captioner's weights, so optimisers,
    checkpoints and DDP never see it; the captioner folder keeps it beside them (``decoder/``)."""

    def __init__(self, dec, steps: int, lr: float, draws: int, seed: int):
        if steps <= 0:
            raise ValueError(f"a Refiner refines: steps must be positive, got {steps}")
        self.dec, self.steps, self.lr, self.draws, self.seed = dec, int(steps), float(lr), int(draws), int(seed)

    def at_decoder_size(self, images) -> torch.Tensor:
        side = self.dec.image_size
        if isinstance(images, torch.Tensor) and tuple(images.shape[1:3]) == (side, side):
            return images
        fit = [np.asarray(im) for im in images]
        fit = [a if a.shape[:2] == (side, side) else np.asarray(square_crop(Image.fromarray(a), side)) for a in fit]
        return torch.from_numpy(np.stack(fit))

    def settings(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "draws": self.draws, "seed": self.seed}

    def refine_images(self, images, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The images (uint8 HxWx3 each: an NxHxWx3 array or tensor, or a list of any sizes) and the
        encoder's embeddings ``z`` of them -> the refined embeddings (z's dtype) and the mean loss of
        the first and last tenth of the steps. Images not at the decoder's size are centre-cropped and
        resized to it, as ``vlv reconstruct`` does."""
        self.dec.to(z.device)
        latents = self.dec.image_latents(self.at_decoder_size(images))
        refined, losses, _ = refine(self.dec, latents, z.float(), self.steps, self.lr, self.draws, self.seed)
        return refined.to(z.dtype), losses

    def __call__(self, images, z: torch.Tensor) -> torch.Tensor:
        return self.refine_images(images, z)[0]
