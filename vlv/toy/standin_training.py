"""The training loop the toy stand-in modules share (``vlv.pretrain_toy_*``).

A stand-in module builds its models and a ``loss_fn(step, rng, gen)``; this loop owns the device,
seeding, AdamW with a warmup + whole-run cosine schedule, gradient clipping, a progress bar, the loss
log and curve, checkpoints every ``checkpoint_every`` steps with automatic resume, and the manifest.
Each step's randomness comes from ``rng = default_rng([seed, step])`` and a torch generator seeded
by (seed, step), so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.manifest import build_manifest, write_manifest
from vlv.models.toy import images_to_tensor
from vlv.shapes.world import WorldSpec, render_array, sample_scenes
from vlv.training import (
    Checkpointer,
    LossLog,
    fingerprint,
    pick_device,
    plot_loss,
    rng_state,
    seed_everything,
    set_rng_state,
    warmup_cosine,
)


def standin_args(doc: str | None, argv=None) -> tuple[argparse.Namespace, dict, logging.Logger]:
    p = stage_parser(doc)
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--work", required=True, help="checkpoint folder (kept on failure, resumed from)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = p.parse_args(argv)
    return args, load_params(args.params), setup_logging()


class StandinTrainer:
    def __init__(self, stage: str, args: argparse.Namespace, params: dict, log: logging.Logger):
        self.stage = stage
        self.params = params
        self.tr = params["train"]
        self.seed = int(self.tr["seed"])
        self.log = log
        self.device = pick_device(args.device)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt = Checkpointer(args.work, fingerprint=fingerprint(params))
        self.start_step = 0
        self.seconds = 0.0
        self.n_params = 0
        seed_everything(self.seed)

    def image_pool(self, spec: WorldSpec):
        """The training scenes and their renders in [-1, 1] on the device (seed + 1: not an eval seed)."""
        scenes = sample_scenes(spec, self.seed + 1, int(self.tr["pool_size"]))
        return scenes, images_to_tensor(render_array(scenes, spec)).to(self.device)

    def fit(self, modules: dict[str, torch.nn.Module], loss_fn: Callable[..., torch.Tensor]) -> None:
        tr = self.tr
        for m in modules.values():
            m.to(self.device).train()
        trainable = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for m in modules.values() for p in m.parameters())
        self.log.info("%s: %.2fM parameters, device %s", self.stage, self.n_params / 1e6, self.device)
        opt = torch.optim.AdamW(trainable, lr=tr["lr"], betas=(0.9, 0.999), weight_decay=tr["weight_decay"])
        steps = int(tr["steps"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, steps, tr["warmup_steps"], tr["final_lr_ratio"])
        )
        state = self.ckpt.load_latest()
        if state is not None:
            for name, m in modules.items():
                m.load_state_dict(state["modules"][name])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            self.start_step = int(state["step"])
            self.log.info("resumed from %s at step %d", self.ckpt.latest(), self.start_step)
        loss_log = LossLog(self.out / "loss.csv", resume_step=self.start_step)
        t0 = time.time()
        bar = tqdm(range(self.start_step, steps), initial=self.start_step, total=steps, desc=self.stage, mininterval=5)
        for step in bar:
            rng = np.random.default_rng([self.seed, step])
            gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + step)
            loss = loss_fn(step, rng, gen)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"{self.stage}: loss is {loss.item()} at step {step}; lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, tr["grad_clip"])
            opt.step()
            sched.step()
            if (step + 1) % tr["log_every"] == 0 or step + 1 == steps:
                loss_log.append(step + 1, loss.item(), sched.get_last_lr()[0], time.time() - t0)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if (step + 1) % tr["checkpoint_every"] == 0 and step + 1 < steps:
                self.ckpt.save(
                    step + 1,
                    {
                        "modules": {name: m.state_dict() for name, m in modules.items()},
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "rng": rng_state(),
                    },
                )
        self.seconds = time.time() - t0
        for m in modules.values():
            m.cpu().eval()

    def finish(self, title: str, **extra) -> None:
        """Loss curve, manifest, and removal of the checkpoints (the folder is complete)."""
        plot_loss(self.out / "loss.csv", self.out / "loss.png", f"{title} ({self.tr['steps']} steps)")
        write_manifest(
            self.out / "manifest.json",
            build_manifest(
                self.stage,
                self.params,
                self.seed,
                device=str(self.device),
                parameters=self.n_params,
                train_seconds_this_run=round(self.seconds, 1),
                resumed_from_step=self.start_step,
                **extra,
            ),
        )
        self.ckpt.clear()
        self.log.info("saved %s (%.0f s of training this run)", self.out, self.seconds)
