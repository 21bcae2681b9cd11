"""Pretrain a toy text-to-image pipeline on Shapes captions (the stand-in for Stable Diffusion 2.1).

Trains a CLIP text encoder and a UNet2DConditionModel together with the v-prediction loss on
pixel-space "latents" (2x2 space-to-depth), 10% caption dropout for classifier-free guidance, and
saves a ``StableDiffusionPipeline`` folder. Scenes come from a pre-rendered pool; each step's
batch, captions and noise are a pure function of (seed, step), so a resumed run ends with the same
weights as an uninterrupted one.

Inputs: none but ``--params`` (world, model and training settings).
Outputs: ``--out DIR`` (pipeline folder + manifest.json + loss.csv + loss.png).
Checkpoints: ``--work DIR`` (resumed automatically; removed after success).

Example:
    python -m vlv.toy.pretrain_toy_t2i --params "$(python -m vlv.config pretrain_toy.t2i)" \
        --out results/pretrain_toy/t2i --work work/pretrain_toy/t2i
"""

from __future__ import annotations

import numpy as np
import torch

from vlv.models.pixel_autoencoder import PixelUnshuffleAutoencoder
from vlv.models.t2i import denoising_loss
from vlv.models.toy import build_scheduler, build_text_encoder, build_unet, shapes_corpus, train_clip_tokenizer
from vlv.shapes.captions import short_caption, teacher_caption
from vlv.shapes.world import WorldSpec
from vlv.toy.standin_training import StandinTrainer, standin_args


def batch_captions(
    scenes, idx, rng: np.random.Generator, spec: WorldSpec, teacher_prob: float, dropout: float
) -> list[str]:
    caps = []
    for i in idx:
        if rng.random() < dropout:
            caps.append("")
        elif rng.random() < teacher_prob:
            caps.append(teacher_caption(scenes[i], spec))
        else:
            caps.append(short_caption(scenes[i], rng))
    return caps


def main(argv=None) -> int:
    args, params, log = standin_args(__doc__, argv)
    spec = WorldSpec.from_config(params["shapes"])
    m, tr = params["model"], params["train"]
    trainer = StandinTrainer("pretrain_toy_t2i", args, params, log)
    max_len = m["text_encoder"]["max_length"]
    tokenizer = train_clip_tokenizer(shapes_corpus(spec, seed=trainer.seed), m["vocab_size"], max_len)
    text_encoder = build_text_encoder(
        m["text_encoder"], len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    vae = PixelUnshuffleAutoencoder(factor=m["space_to_depth"]).to(trainer.device)
    latent_size = spec.image_size // m["space_to_depth"]
    unet = build_unet(m["unet"], vae.config.latent_channels, latent_size, m["text_encoder"]["hidden_size"])
    sampler = build_scheduler(m["scheduler"])
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler.from_config(sampler.config)
    scenes, pool = trainer.image_pool(spec)
    device = trainer.device

    def loss_fn(step: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        idx = rng.integers(len(scenes), size=tr["batch_size"])
        caps = batch_captions(scenes, idx, rng, spec, tr["teacher_caption_prob"], tr["caption_dropout"])
        ids = tokenizer(caps, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
        latents = vae.encode(pool[torch.from_numpy(idx).to(device)]).latent_dist.mode() * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(device)
        enc = text_encoder(ids.to(device)).last_hidden_state
        return denoising_loss(unet, noise_sched, latents, enc, noise, t)

    trainer.fit({"text_encoder": text_encoder, "unet": unet}, loss_fn)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae.cpu(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sampler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(trainer.out)
    trainer.finish(title="toy T2I")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
