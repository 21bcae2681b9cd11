"""Stage 2: fine-tune the caption decoder (psi + LM, optionally the VLV encoder) on teacher captions.

The VLV encoder's caption embeddings pass the frozen CLIP text encoder, the MLP psi maps them into
the LM's input space as a prefix, and the LM learns the teacher caption with cross-entropy (no
loss on the prefix or padding; an end-of-sequence token after each caption, so it learns to stop).
``--init vlv`` starts from the stage-1 encoder; ``--init no_stage1`` from the Florence-2 folder
before distillation (queries and phi random): the paper's Table 7 baseline. ``--init direct``, the
direct captioner of the data-efficiency comparison, starts there too, with its own recipe
(``stage2.direct`` in ``--params``: everything but the CLIP text encoder trains, and a seeded
``validation_percent`` of its pairs is held out to choose the steps: ``Validation``).
``--pairs-fraction`` trains on the first share of the pair set (sorted by key).

accelerate for devices and processes; each step's batch is a pure function of (seed, step). When
the encoder is frozen (``mlp``, ``mlp_llm``) its output T(z) is computed once and cached on disk in
``--work``; with ``refine_steps`` > 0 (``stage1.refine_*``, for ``--init vlv``) the embeddings are
refined on each image through the frozen decoder (``--t2i``) before T reads them, in that cache and
in the saved captioner's captioning (``vlv.models.refine``); otherwise loader workers (``--workers``) read and preprocess each step's images from the shards. AdamW,
warmup then ``lr_schedule`` over the whole run, fp32 or bf16, LoRA by config; checkpoints in
``--work`` resumed automatically. The result is a ``VLVCaptioner`` folder.

Example:
    python -m vlv.stages.finetune_stage2 --params "$(python -m vlv.config stage2)" --init vlv \
        --encoder results/distill_stage1/encoder --t2i models/toy/t2i --llm models/toy/lm \
        --images results/generate_shapes/pairs --captions results/synthesize_captions/captions.jsonl \
        --out results/finetune_stage2/vlv_pairs100 --work work/toy/finetune_stage2/vlv_pairs100
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.data.loader import (
    Collate,
    FeatureCache,
    ShardImages,
    StepBatches,
    data_stamp,
    gather,
    make_loader,
    path_stamp,
)
from vlv.data.shards import ShardIndex
from vlv.models.frozen_decoder import FrozenT2IDecoder
from vlv.models.vlv_captioner import TRAINABLE, VLVCaptioner
from vlv.training import (
    accumulate,
    end_training,
    fingerprint,
    finish_training,
    make_accelerator,
    micro_batches,
    seed_everything,
    sharded,
    train,
    train_mode,
    whole_model,
)
from vlv.variants import INITS


def read_pairs(captions_jsonl: str, fraction: float) -> dict[str, str]:
    """key -> teacher caption: the first ``fraction`` of the pair set in key order (at least one)."""
    rows = [json.loads(line) for line in Path(captions_jsonl).read_text().splitlines() if line.strip()]
    pairs = dict(sorted((r["key"], r["caption"]) for r in rows))
    n = max(1, round(len(pairs) * fraction))
    return dict(list(pairs.items())[:n])


class Validation:
    """Steps chosen on held-out pairs (the direct captioner): the mean caption token loss on the
    validation part every ``validate_every`` steps and after the last; the trainable weights at the
    lowest loss so far are kept (in ``work``, so a resumed run keeps them) and are the ones saved.
    Every process computes the same loss on the whole validation part (it is small)."""

    def __init__(self, cfg, acc, cap, images: str, held: dict[str, str], collate, work: str, stamp: str):
        if sharded(acc):
            raise SystemExit("stage2.direct: choosing steps on validation keeps whole weights; not under FSDP")
        self.acc, self.cap, self.stamp = acc, cap, stamp
        self.every, self.steps = int(cfg["validate_every"]), int(cfg["steps"])
        index = ShardIndex(images, held)
        if len(index) != len(held):
            raise SystemExit(f"{len(held) - len(index)} validation images are not in {images}")
        self.keys = index.keys
        self.tokens = [cap.tokenize([held[k]], cfg["max_caption_tokens"])["input_ids"][0] for k in self.keys]
        batch, n = int(cfg["batch_size"]), len(self.keys)
        chunks = [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]
        self.batches = lambda: zip(chunks, make_loader(ShardImages(index), chunks, collate, 0))
        self.path = Path(work) / "validation.pt"
        self.rows: list[dict] = []
        self.best: dict | None = None
        self.started = False

    def resume(self, start: int) -> None:
        """Take up what a killed run had measured, up to the step it resumes from."""
        self.started = True
        if start == 0 or not self.path.exists():
            return
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("stamp") == self.stamp:
            self.rows = [r for r in state["rows"] if r["step"] <= start]
            if state["best"]["step"] <= start:
                self.best = state["best"]

    def loss(self, model) -> float:
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for part, (images, pixels) in self.batches():
                inputs = {k: v.to(self.acc.device) for k, v in self.cap.pad([self.tokens[i] for i in part]).items()}
                with self.acc.autocast():
                    out = model(pixel_values=pixels.to(self.acc.device), images=images, **inputs)
                total, n = total + float(out) * len(part), n + len(part)
        train_mode(model)
        return total / n

    def __call__(self, model, step: int) -> None:
        if not self.started:  # the first step after a resume
            self.resume(step)
        done = step + 1
        if done % self.every and done != self.steps:
            return
        unwrapped = self.acc.unwrap_model(model)
        loss = self.loss(unwrapped)
        self.rows.append({"step": done, "validation_loss": round(loss, 6)})
        if self.best is None or loss < self.best["loss"]:
            weights = {n: p.detach().cpu().clone() for n, p in unwrapped.named_parameters() if p.requires_grad}
            self.best = {"step": done, "loss": loss, "weights": weights}
        if self.acc.is_main_process and done != self.steps:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            torch.save({"stamp": self.stamp, "rows": self.rows, "best": self.best}, tmp)
            tmp.replace(self.path)

    def restore(self, model) -> dict:
        """Load the best weights into ``model``; what the manifest records of the choice."""
        unwrapped = self.acc.unwrap_model(model)
        missing = set(self.best["weights"]) - {n for n, _ in unwrapped.named_parameters()}
        if missing:
            raise RuntimeError(f"validation weights for unknown parameters {sorted(missing)[:3]}")
        with torch.no_grad():
            for n, p in unwrapped.named_parameters():
                if n in self.best["weights"]:
                    p.copy_(self.best["weights"][n])
        self.path.unlink(missing_ok=True)
        return {
            "pairs": len(self.keys),
            "chosen_step": self.best["step"],
            "validation_loss": round(self.best["loss"], 6),
        }


def held_out(cfg: dict, pairs: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The pairs trained on and those held out to choose the steps: a seeded ``validation_percent``
    of them (``stage2.direct``'s), at least one and never all; none for the other captioners."""
    percent = cfg.get("validation_percent")
    if not percent:
        return pairs, {}
    keys = sorted(pairs)
    n_val = max(1, round(len(keys) * percent / 100))
    if n_val >= len(keys):
        raise SystemExit(f"{len(keys)} pairs leave none to train on after a {percent} % validation part")
    held = {keys[i] for i in np.random.default_rng([int(cfg["seed"]), 1]).choice(len(keys), n_val, replace=False)}
    return {k: pairs[k] for k in keys if k not in held}, {k: pairs[k] for k in keys if k in held}


def build(cfg: dict, init: str, encoder: str, t2i: str, llm: str) -> VLVCaptioner:
    if init not in INITS:
        raise SystemExit(f"--init must be one of {', '.join(INITS)}, got {init!r}")
    if init == "vlv" and not (Path(encoder) / "vlv_encoder.json").exists():
        raise SystemExit(f"--init vlv needs a stage-1 encoder folder; {encoder} is not one")
    cap = VLVCaptioner.build(encoder, t2i, llm, cfg["route"], num_queries=cfg["num_queries"])
    if cfg["finetune"] == "lora":
        if cfg["trainable"] == "mlp":
            raise SystemExit("stage2.finetune: lora adapts the LM, but stage2.trainable: mlp freezes it")
        cap.add_lora(cfg["lora"]["r"], cfg["lora"]["alpha"])
    cap.set_trainable(cfg["trainable"])
    if cfg.get("refine_steps", 0) > 0:
        if init != "vlv":
            raise SystemExit(f"refining embeddings needs a stage-1 encoder (--init vlv), not --init {init}")
        if TRAINABLE[cfg["trainable"]]:
            raise SystemExit(
                f"refining embeddings needs the encoder frozen; stage2.trainable {cfg['trainable']} trains it"
            )
        dec = FrozenT2IDecoder(t2i, cap.route)
        cap.refine_with(dec, cfg["refine_steps"], cfg["refine_lr"], cfg["refine_draws"], cfg["seed"])
    if cfg["gradient_checkpointing"]:
        cap.llm.gradient_checkpointing_enable()
    return cap


def caption_input_cache(cfg, args, acc, cap, keys, loader):
    """With the encoder frozen, T(z) never changes: computed once into ``--work``. Returns the cache
    and its array, or (None, None) when the encoder trains."""
    if TRAINABLE[cfg["trainable"]]:
        return None, None
    made_from = {k: cfg[k] for k in ("route", "num_queries")}
    if cap.refiner is not None:
        made_from["refine"] = cap.refiner.settings()
    stamp = {
        "images": keys,
        "shards": path_stamp(args.images),
        "init": args.init,
        "encoder": path_stamp(args.encoder),
        "t2i": path_stamp(args.t2i),
        **made_from,
    }
    cache = FeatureCache(
        Path(args.work) / "caption_input",
        fingerprint(stamp),
        acc.process_index,
        acc.num_processes,
        acc.wait_for_everyone,
    )
    cached = cache.build(
        len(keys),
        loader,
        lambda b: cap.caption_input(b[1].to(acc.device), b[0]),
        "caption inputs",
        piece=cfg["micro_batch_size"],
    )
    return cache, cached


def make_step_loss(cfg, acc, cap, captions, batches, cached):
    """The step's loss for ``train``: this process's captions of the step's global batch, tokenized,
    the caption inputs (cached, or from the images) and the LM's token loss, backward in micro batches."""
    world = acc.num_processes
    per_proc = cfg["batch_size"] // world
    chunks = micro_batches(per_proc, cfg["micro_batch_size"])

    def tokenize(i: int) -> torch.Tensor:
        return cap.tokenize([captions[i]], cfg["max_caption_tokens"])["input_ids"][0]

    def step_loss(model, step, batch):
        idx = batches.global_batch(step)
        sel = batches.mine(step)
        tokens = {i: tokenize(i) for i in np.unique(idx).tolist()}
        # several processes or passes: each pass divides its token-loss sum by this process's share
        # of the global batch's tokens, so that the passes and DDP's average give the global token mean
        n_items = None
        if world > 1 or len(chunks) > 1:
            n_items = torch.tensor(sum(len(tokens[i]) for i in idx.tolist()) / world, device=acc.device)

        def loss_fn(c):
            part = sel[c]
            inputs = {k: v.to(acc.device) for k, v in cap.pad([tokens[i] for i in part.tolist()]).items()}
            if cached is not None:
                inputs["caption_input"] = gather(cached, part).to(acc.device)
            else:
                inputs["pixel_values"] = batch[1][c].to(acc.device)
            if n_items is not None:
                inputs["num_items_in_batch"] = n_items
            with acc.autocast():
                return model(**inputs)

        return accumulate(acc, model, chunks, loss_fn)

    return step_loss


def write_curve(path: Path, rows: list[dict]) -> None:
    path.write_text("step,validation_loss\n" + "".join(f"{r['step']},{r['validation_loss']}\n" for r in rows))


def parse_args(argv=None):
    p = stage_parser(__doc__)
    p.add_argument("--init", required=True, choices=INITS)
    p.add_argument(
        "--encoder", required=True, help="stage-1 encoder folder (vlv) or Florence-2 folder/id (no_stage1, direct)"
    )
    p.add_argument("--t2i", required=True, help="the T2I pipeline whose CLIP text encoder stage 1 used")
    p.add_argument("--llm", required=True)
    p.add_argument("--images", required=True, help="shard folder of the pair set")
    p.add_argument("--captions", required=True, help="teacher captions (synthesize_captions JSONL)")
    p.add_argument("--pairs-fraction", type=float, default=1.0)
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="checkpoint folder (kept on failure, resumed from)")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--workers", type=int, default=0, help="loader worker processes per process (0: decode inline)")
    args = p.parse_args(argv)
    if not 0 < args.pairs_fraction <= 1:
        raise SystemExit(f"--pairs-fraction must be in (0, 1], got {args.pairs_fraction}")
    return args


def training_pairs(cfg: dict, args) -> tuple[ShardIndex, list[str], dict[str, str]]:
    """The pair set's shard index, the training captions in its order, and the held-out pairs."""
    pairs, held = held_out(cfg, read_pairs(args.captions, args.pairs_fraction))
    index = ShardIndex(args.images, pairs)
    if len(index) != len(pairs):
        missing = index.missing(pairs)
        raise SystemExit(f"{len(missing)} captioned images are not in {args.images} (e.g. {missing[:3]})")
    return index, [pairs[k] for k in index.keys], held


def main(argv=None) -> int:
    args = parse_args(argv)
    log = setup_logging()
    cfg = load_params(args.params)
    acc = make_accelerator(args.cpu, cfg["precision"])
    world, rank = acc.num_processes, acc.process_index
    if cfg["batch_size"] % world:
        raise SystemExit(f"stage2.batch_size={cfg['batch_size']} is not divisible by {world} processes")
    seed = int(cfg["seed"])
    seed_everything(seed)  # the same psi (and no-stage-1 queries) on every process

    index, captions, held = training_pairs(cfg, args)
    keys = index.keys
    cap = build(cfg, args.init, args.encoder, args.t2i, args.llm)
    cap.to(acc.device)
    dataset = ShardImages(index)
    collate = Collate(cap.encoder.preprocessor(), args.images)

    def loader(batches):
        return make_loader(dataset, batches, collate, args.workers)

    cache, cached = caption_input_cache(cfg, args, acc, cap, keys, loader)

    def step_batches(start):  # this process's positions for each step from `start` on
        return StepBatches(len(keys), seed, cfg["batch_size"], start, cfg["steps"], rank, world)

    step_loss = make_step_loss(cfg, acc, cap, captions, step_batches(0), cached)
    settings = {**cfg, "world_size": world, "init": args.init, "pairs": len(keys)}
    data = data_stamp(index, captions=fingerprint(captions))
    stamp = fingerprint([settings, data])
    validation = Validation(cfg, acc, cap, args.images, held, collate, args.work, stamp) if held else None
    run = train(
        acc, cap, cfg, step_loss, stage="finetune_stage2", work=args.work, out=args.out, settings=settings, data=data,
        batches=None if cached is not None else (lambda start: loader(step_batches(start))),  # images when not cached
        after_step=validation,
    )  # fmt: skip
    chosen = validation.restore(run.model) if validation else {}
    final = whole_model(acc, run.model, lambda: build(cfg, args.init, args.encoder, args.t2i, args.llm))
    if acc.is_main_process:
        final.save_pretrained(args.out)
    n = (run.steps - run.start) * cfg["batch_size"]
    finish_training(
        acc, run, args.out, cfg, seed, f"stage 2 ({args.init}, {len(keys)} pairs, {run.steps} steps)",
        caches=[cache] if cache is not None else [],
        init=args.init, encoder=args.encoder, t2i=args.t2i, llm=args.llm, pairs=len(keys),
        pairs_fraction=args.pairs_fraction, trainable_parameters=sum(p.numel() for p in run.trainable),
        llm_parameters=sum(p.numel() for p in cap.llm.parameters()),
        captions_per_second=round(n / max(run.seconds, 1e-9), 2), validation=chosen or None,
    )  # fmt: skip
    if chosen and acc.is_main_process:
        write_curve(Path(args.out) / "validation.csv", validation.rows)
    if acc.is_main_process:
        log.info("saved %s: %d steps, %.0f s", args.out, run.steps, run.seconds)
    end_training(acc, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
