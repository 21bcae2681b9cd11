"""How the toy stand-ins train (``vlv.toy.pretrain_toy_*``).

A stand-in module builds its models and a ``loss_fn(step, rng, gen)``; ``StandinTrainer`` runs them
through the stages' own loop (``vlv.training.train``: accelerate, AdamW with the configured betas and a
warmup + whole-run cosine schedule, gradient clipping, a progress bar, the loss log and curve,
checkpoints every ``checkpoint_every`` steps with automatic resume, and the manifest).
Each step's randomness comes from ``rng = default_rng([seed, step])`` and a torch generator seeded
by (seed, step), so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vlv.cli_common import load_params, setup_logging, stage_parser
from vlv.models.toy import images_to_tensor
from vlv.shapes.world import WorldSpec, render_array, sample_scenes
from vlv.training import (
    TrainingRun,
    finish_training,
    make_accelerator,
    pick_device,
    seed_everything,
    train,
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
        self.acc = make_accelerator(cpu=pick_device(args.device).type == "cpu", precision="fp32")
        self.device = self.acc.device
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = args.work
        self.run: TrainingRun | None = None
        self.n_params = 0
        seed_everything(self.seed)

    def image_pool(self, spec: WorldSpec):
        """The training scenes and their renders in [-1, 1] on the device (seed + 1: not an eval seed)."""
        scenes = sample_scenes(spec, self.seed + 1, int(self.tr["pool_size"]))
        return scenes, images_to_tensor(render_array(scenes, spec)).to(self.device)

    def fit(self, modules: dict[str, torch.nn.Module], loss_fn: Callable[..., torch.Tensor]) -> None:
        """Train ``modules`` with ``loss_fn(step, rng, gen)`` through the stages' training loop."""
        model = torch.nn.ModuleDict(modules)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.log.info("%s: %.2fM parameters, device %s", self.stage, self.n_params / 1e6, self.acc.device)
        model.to(self.acc.device)

        def step_loss(model, step, batch):
            rng = np.random.default_rng([self.seed, step])
            gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + step)
            loss = loss_fn(step, rng, gen)
            self.acc.backward(loss)
            return loss.detach()

        self.run = train(
            self.acc, model, self.tr, step_loss, stage=self.stage, work=self.work, out=self.out, settings=self.params
        )
        for m in modules.values():
            m.cpu().eval()

    def finish(self, title: str, **extra) -> None:
        """Loss curve, manifest, and removal of the checkpoints (the folder is complete)."""
        finish_training(
            self.acc, self.run, self.out, self.params, self.seed, f"{title} ({self.tr['steps']} steps)",
            parameters=self.n_params, **extra,
        )  # fmt: skip
        self.log.info("saved %s (%.0f s of training this run)", self.out, self.run.seconds)
