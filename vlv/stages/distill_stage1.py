"""Stage 1: distil the VLV encoder through the frozen text-to-image decoder (images only, no text).

Each step: encode a batch of images into N_q caption embeddings, condition the frozen decoder on
them (through its frozen CLIP text encoder, or directly, by ``route``), and minimise the denoising
MSE on the images' own latents at random timesteps (``noise_draws`` timestep-and-noise draws per
image, the encoder run once for them; the paper: one, uniform). Levers, off by default (issue 23):
timesteps stratified, logit-normal or from a band, antithetic noise pairs, an EMA of the weights,
a loss weighted toward edges. accelerate handles devices and
processes (the global batch is split across processes; each step's images, noise and timesteps are
a pure function of (seed, step), so 1 and N processes see the same global batch). AdamW with the
configured betas and weight decay, a warmup + cosine schedule over the *whole* run, fp32 or bf16,
optional gradient checkpointing, optional speed settings for the frozen UNet (bf16 storage,
channels_last, ``torch.compile``), optional cached VAE latent distributions and (with the vision tower
frozen) cached vision-tower features, each computed once into ``--work``. Checkpoints go to
``--work`` (kept when a run fails) and the newest is resumed automatically.

Inputs: ``--images`` (tar shards), ``--subset`` (subset.json; its kept keys are the training set),
``--vision`` (Florence-2 folder or hub id), ``--decoder`` (T2I pipeline folder or hub id).
Outputs: ``--out DIR``: the encoder folder (``VLVEncoder.from_pretrained``), manifest.json,
loss.csv, loss.png.

Example:
    python -m vlv.stages.distill_stage1 --params "$(python -m vlv.config stage1)" \
        --images results/generate_shapes/pool --subset results/subset/subset.json \
        --vision models/toy/vision --decoder models/toy/t2i \
        --out results/distill_stage1/encoder --work work/distill_stage1
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.data.loader import (
    Collate,
    FeatureCache,
    ShardImages,
    StepBatches,
    StepData,
    as_is,
    data_stamp,
    make_loader,
    path_stamp,
)
from vlv.data.shards import ShardIndex
from vlv.models.frozen_decoder import FrozenT2IDecoder, to_pixels
from vlv.models.vlv_encoder import VLVEncoder
from vlv.training import (
    accumulate,
    end_training,
    fingerprint,
    finish_training,
    make_accelerator,
    micro_batches,
    seed_everything,
    train,
    whole_model,
)


def training_keys(subset_json: str, data_percent: float = 100, seed: int = 0) -> list[str]:
    """The subset's kept keys; below 100 %, a seeded sample of that share, in the subset's order."""
    keys = [r["key"] for r in json.loads(Path(subset_json).read_text())["kept"]]
    if data_percent >= 100:
        return keys
    n = max(1, round(len(keys) * data_percent / 100))
    chosen = np.random.default_rng(seed).choice(len(keys), size=n, replace=False)
    return [keys[i] for i in sorted(chosen)]


COMPILABLE = ("unet", "text_encoder", "language_model")  # what stage1.compile may name
TIMESTEP_SAMPLING = ("uniform", "stratified", "logit_normal")  # what stage1.timestep_sampling may name


def check_levers(cfg: dict, total: int) -> None:
    """Refuse lever settings that cannot work (issue 23's levers: timestep sampling, antithetic
    noise, EMA), with the key to change."""
    if cfg["timestep_sampling"] not in TIMESTEP_SAMPLING:
        raise SystemExit(
            f"stage1.timestep_sampling is {cfg['timestep_sampling']!r}; it takes {list(TIMESTEP_SAMPLING)}"
        )
    lo, hi = cfg["timestep_range"] or (0, total)
    if not 0 <= lo < hi <= total:
        raise SystemExit(f"stage1.timestep_range {[lo, hi]} must satisfy 0 <= low < high <= {total}")
    if cfg["antithetic_noise"] and int(cfg["noise_draws"]) % 2:
        raise SystemExit("stage1.antithetic_noise pairs each noise draw with its negation: noise_draws must be even")


def draw_timesteps(cfg: dict, g: torch.Generator, draws: int, batch: int, total: int) -> torch.Tensor:
    """The step's timesteps, (draws, global batch), from ``g``: uniform over ``timestep_range`` (the
    paper's; unchanged draws from ``g`` at the default range), stratified (the step's draws x batch
    timesteps one in each of as many equal strata of the range, shuffled over images and draws), or
    logit-normal (sigmoid of N(mean, std) over the range, SD3's). With antithetic noise, the second
    half of the draws repeats the first half's timesteps (its noise is the first half's negated)."""
    lo, hi = cfg["timestep_range"] or (0, total)
    shape = (draws // 2 if cfg["antithetic_noise"] else draws, batch)
    scheme = cfg["timestep_sampling"]
    if scheme == "uniform":
        t = torch.randint(lo, hi, shape, generator=g)
    else:
        n = shape[0] * shape[1]
        if scheme == "stratified":
            u = (torch.randperm(n, generator=g) + torch.rand(n, generator=g)) / n
        else:
            mean, std = cfg["logit_normal"]
            u = torch.sigmoid(mean + std * torch.randn(n, generator=g))
        t = (lo + u * (hi - lo)).long().clamp(lo, hi - 1).reshape(shape)
    return torch.cat([t, t]) if cfg["antithetic_noise"] else t


def edge_weights(latents: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-position loss weights, (B, 1, h, w), leaning to the clean latents' edges: 1 + ``strength``
    x the latents' gradient magnitude (absolute neighbour differences summed over channels) relative
    to its image's mean, rescaled to a mean of 1 per image (the loss keeps its scale). Shape lives on
    object boundaries: a circle and a square differ on about a fifth of their area, all of it there."""
    dx = F.pad((latents[..., :, 1:] - latents[..., :, :-1]).abs(), (0, 1, 0, 0))
    dy = F.pad((latents[..., 1:, :] - latents[..., :-1, :]).abs(), (0, 0, 0, 1))
    e = (dx + dy).sum(1, keepdim=True)
    w = 1 + strength * e / e.mean((2, 3), keepdim=True).clamp_min(1e-8)
    return w / w.mean((2, 3), keepdim=True)


def draw_step_noise(gen: torch.Generator, draws: int, batch: int, shape: tuple, antithetic: bool) -> torch.Tensor:
    """The step's noise, (draws, global batch, *latent shape): Gaussian, or with ``antithetic`` its
    first half drawn and the second half that half negated (each pair averages to zero noise)."""
    if not antithetic:
        return torch.randn((draws, batch, *shape), generator=gen)
    half = torch.randn((draws // 2, batch, *shape), generator=gen)
    return torch.cat([half, -half])


def build(params: dict, vision: str, decoder: str, device) -> tuple[VLVEncoder, FrozenT2IDecoder]:
    """The encoder and the frozen decoder with the stage's speed settings applied (none of which
    changes what is trained beyond float rounding; ``vlv.bench.stage1.switch_check`` measures it)."""
    dec = FrozenT2IDecoder(decoder, route=params["route"]).to(device)
    if params["frozen_bf16"]:  # it never trains: stored and computed in bf16, autocast off for it
        if params["precision"] != "bf16":
            raise SystemExit(
                "stage1.frozen_bf16 stores the frozen UNet and text encoder in bf16: it needs precision bf16"
            )
        dec.store_frozen_in(torch.bfloat16)
    if params["channels_last"]:
        dec.unet.to(memory_format=torch.channels_last)
    if params["num_queries"] > dec.max_tokens and params["route"] == "text_encoder":
        raise SystemExit(
            f"stage1.num_queries={params['num_queries']} exceeds the text encoder's {dec.max_tokens} positions"
        )
    enc = VLVEncoder.from_florence(vision, params["num_queries"], dec.embed_dim, route=params["route"])
    enc.set_trainable(params["trainable"])
    if params["gradient_checkpointing"]:
        enc.florence.gradient_checkpointing_enable()
        dec.unet.enable_gradient_checkpointing()
    unknown = set(params["compile"]) - set(COMPILABLE)
    if unknown:
        raise SystemExit(f"stage1.compile names {sorted(unknown)}; it takes {list(COMPILABLE)}")
    lm = enc.florence.model.language_model
    te = dec.text_encoder  # the modules the step calls (the text model's own forward is not one of them)
    compiled = {
        "unet": [dec.unet],
        "text_encoder": [te.encoder, te.final_layer_norm],
        "language_model": [lm.encoder, lm.decoder],
    }
    for name in params["compile"]:
        for module in compiled[name]:
            module.compile()  # in place: the same module, its forward compiled on its first call
    return enc, dec


def vision_cache_dtype(cfg: dict) -> torch.dtype:
    """What the vision-feature cache stores: bf16 when the step computes in bf16 (the features' first
    use, the encoder's input embeddings, rounds them to bf16 in any case), else float32."""
    return torch.bfloat16 if cfg["precision"] == "bf16" else torch.float32


def build_caches(cfg, args, acc, enc, dec, index, loader):
    """The disk caches a run trains from: the VAE's latent distributions (``cache_latents``, float32)
    and the frozen vision tower's features (``cache_vision_features``, in bf16 when the step computes
    in bf16: its first use casts them to the encoder's dtype), each computed once into ``--work``.
    Returns ({"latents" / "vision": the cache file}, the caches to clear when done)."""
    rank, world = acc.process_index, acc.num_processes
    images_stamp = {"images": index.keys, "shards": path_stamp(args.images)}
    files, caches = {}, []
    if cfg["cache_latents"]:  # the frozen VAE is deterministic: its latent distributions, once, on disk
        cache = FeatureCache(
            Path(args.work) / "latents",
            fingerprint({**images_stamp, "decoder": path_stamp(args.decoder)}),
            rank,
            world,
            acc.wait_for_everyone,
        )
        cache.build(
            len(index),
            loader,
            lambda b: dec.latent_dist(to_pixels(b[0]).to(acc.device)).parameters,
            "VAE latents",
            piece=cfg["micro_batch_size"],
        )
        files["latents"] = cache.array_path
        caches.append(cache)
    if cfg["cache_vision_features"]:  # a frozen vision tower without augmentation: a function of the image
        if "vision_tower" in cfg["trainable"]:
            raise SystemExit("stage1.cache_vision_features needs a frozen vision tower, but trainable has vision_tower")
        vcache = FeatureCache(
            Path(args.work) / "vision",
            fingerprint({**images_stamp, "vision": path_stamp(args.vision), "precision": cfg["precision"]}),
            rank,
            world,
            acc.wait_for_everyone,
            dtype=vision_cache_dtype(cfg),
        )

        def vision_features(b):
            with acc.autocast():  # the precision the step itself would compute them in
                return enc.image_features(b[1].to(acc.device))

        vcache.build(len(index), loader, vision_features, "vision features", piece=cfg["micro_batch_size"])
        files["vision"] = vcache.array_path
        caches.append(vcache)
    return files, caches


def make_step_loss(cfg, acc, dec):
    """The step's loss for ``train``: the step's timesteps and noise from (seed, step) for the whole
    global batch, this process's slice of it, the latents (from the cache's rows or encoded from the
    images), then the encoder (on the images or the cached vision features) and the frozen decoder's
    denoising loss, backward in micro batches. ``batch``: a ``StepData`` dict."""
    rank, world = acc.process_index, acc.num_processes
    per_proc = cfg["batch_size"] // world
    chunks = micro_batches(per_proc, cfg["micro_batch_size"])
    seed, draws, edge = int(cfg["seed"]), int(cfg["noise_draws"]), float(cfg["edge_weight"])
    scaling = dec.vae.config.scaling_factor

    def step_loss(model, step, batch):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        # draws x global batch: each image is noised `noise_draws` times (the encoder runs once for them)
        timesteps = draw_timesteps(cfg, g, draws, cfg["batch_size"], dec.noise_scheduler.config.num_train_timesteps)
        noise_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        mine = slice(rank * per_proc, (rank + 1) * per_proc)
        device = {"device": acc.device, "non_blocking": True}  # from pinned memory: asynchronous
        with torch.no_grad():
            if "latents" in batch:
                from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

                # in the layout the VAE gives its (NHWC-born) images, as the uncached path has it
                dist = DiagonalGaussianDistribution(batch["latents"].to(**device, memory_format=torch.channels_last))
            else:
                dist = dec.latent_dist(to_pixels(batch["images"]).to(acc.device))
            latents = dist.sample(generator=torch.Generator(device=acc.device).manual_seed(noise_seed + rank)) * scaling
        # noise for the whole global batch, then this process's slice: same draws for any world size
        gen = torch.Generator().manual_seed(noise_seed)
        noise = draw_step_noise(gen, draws, cfg["batch_size"], latents.shape[1:], cfg["antithetic_noise"])[:, mine]
        t_mine = timesteps[:, mine]
        feats = batch["vision"].to(**device) if "vision" in batch else None

        def loss_fn(c):
            with acc.autocast():
                if feats is None:
                    z = model(batch["pixel_values"][c].to(acc.device))
                else:
                    z = model(image_features=feats[c])
                cond, n = dec.condition(z), c.stop - c.start
                weight = edge_weights(latents[c], edge).repeat(draws, 1, 1, 1) if edge else None
                loss = dec.diffusion_loss(  # the mean over every (image, draw) pair of this micro batch
                    latents[c].repeat(draws, 1, 1, 1),
                    cond.repeat(draws, 1, 1),
                    noise[:, c].reshape(draws * n, *noise.shape[2:]),
                    t_mine[:, c].reshape(draws * n),
                    weight=weight,
                )
            return loss if len(chunks) == 1 else loss * (n / per_proc)

        return accumulate(acc, model, chunks, loss_fn)

    return step_loss


def main(argv=None) -> int:
    p = stage_parser(__doc__)
    p.add_argument("--images", required=True)
    p.add_argument("--subset", required=True)
    p.add_argument("--vision", required=True)
    p.add_argument("--decoder", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="checkpoint folder (kept on failure, resumed from)")
    p.add_argument("--cpu", action="store_true", help="force the CPU even where a GPU is present")
    p.add_argument("--workers", type=int, default=0, help="loader worker processes per process (0: decode inline)")
    args = p.parse_args(argv)
    log = setup_logging()
    cfg = load_params(args.params)
    acc = make_accelerator(args.cpu, cfg["precision"])
    torch.backends.cudnn.benchmark = bool(cfg["cudnn_benchmark"])  # (CUDA convolutions only)
    world, rank = acc.num_processes, acc.process_index
    if cfg["batch_size"] % world:
        raise SystemExit(f"stage1.batch_size={cfg['batch_size']} is not divisible by {world} processes")
    seed = int(cfg["seed"])
    seed_everything(seed)  # the same initial queries and phi on every process

    enc, dec = build(cfg, args.vision, args.decoder, acc.device)
    check_levers(cfg, dec.noise_scheduler.config.num_train_timesteps)
    keys = training_keys(args.subset, cfg["data_percent"], seed)
    index = ShardIndex(args.images, keys)
    if len(index) == 0:
        raise SystemExit(f"no training images: {args.subset} keeps none of the images in {args.images}")
    dataset = ShardImages(index)
    side = dataset[0].shape[0]
    if side != dec.image_size:
        raise SystemExit(f"images are {side} px but the decoder expects {dec.image_size} px")
    collate = Collate(enc.preprocessor(), args.images)

    def loader(batches):
        return make_loader(dataset, batches, collate, args.workers)

    enc.to(acc.device)
    files, caches = build_caches(cfg, args, acc, enc, dec, index, loader)
    reads_images = not {"latents", "vision"} <= files.keys()  # with both caches, no step reads an image
    data = StepData(len(index), dataset if reads_images else None, collate, files)

    def step_data(start):  # this process's data for each step from `start` on
        batches = StepBatches(len(index), seed, cfg["batch_size"], start, cfg["steps"], rank, world)
        return make_loader(data, batches, as_is, args.workers, pin_memory=acc.device.type == "cuda")

    run = train(
        acc, enc, cfg, make_step_loss(cfg, acc, dec), stage="distill_stage1", work=args.work, out=args.out,
        settings={**cfg, "world_size": world}, data=data_stamp(index), batches=step_data, strict=True,
    )  # fmt: skip
    final = whole_model(acc, run.model, lambda: build(cfg, args.vision, args.decoder, "cpu")[0])
    if acc.is_main_process:
        final.save_pretrained(args.out)
    n_img = (run.steps - run.start) * cfg["batch_size"]
    finish_training(
        acc, run, args.out, cfg, seed, f"stage 1 ({run.steps} steps, route {cfg['route']})", caches=caches,
        training_images=len(index), loader_workers=args.workers,
        images_per_second=round(n_img / max(run.seconds, 1e-9), 2), vision=args.vision, decoder=args.decoder,
    )  # fmt: skip
    if acc.is_main_process:
        rate = n_img / max(run.seconds, 1e-9)
        log.info("saved %s: %d steps, %.0f s, %.1f images/s", args.out, run.steps, run.seconds, rate)
    end_training(acc, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
