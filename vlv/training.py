"""The training loop every stage shares (``train``), and its pieces: devices, seeds, schedules, checkpoints
that resume, loss logs."""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import itertools
import logging
import math
import os
import random
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vlv.manifest import build_manifest, write_manifest


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_cosine(step: int, total: int, warmup: int, final_ratio: float) -> float:
    """LR multiplier: linear warmup, then one cosine over the *whole* remaining run to ``final_ratio``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_multiplier(schedule: str, step: int, total: int, warmup: int, final_ratio: float) -> float:
    """Linear warmup, then ``cosine`` or ``linear`` decay over the whole remaining run to ``final_ratio``
    (or ``constant``)."""
    if schedule == "cosine":
        return warmup_cosine(step, total, warmup, final_ratio)
    if step < warmup:
        return (step + 1) / max(1, warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - (1.0 - final_ratio) * progress
    raise ValueError(f"unknown learning-rate schedule {schedule!r} (cosine, linear, constant)")


def sharded(acc) -> bool:
    """Whether accelerate split the model across the processes (FSDP): then saving it takes every process."""
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def save_trainable(acc, ckpt: Checkpointer, step: int, model, optimizer, scheduler, ema=None) -> None:
    """A checkpoint of the trainable tensors and the optimizer's state, whole (frozen tensors come from
    the starting folders), written by the main process. torch's state-dict API gathers them from every
    process's shard under FSDP, so every process calls this; under DDP or alone it reads them as they are."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    trainable, optim = get_state_dict(model, optimizer.optimizer, options=options)
    if acc.is_main_process:
        state = {"trainable": trainable, "optimizer": optim, "scheduler": scheduler.state_dict(), "rng": rng_state()}
        if ema is not None:
            state["ema"] = ema.state_dict()
        ckpt.save(step, state)


def resume_trainable(acc, ckpt: Checkpointer, model, optimizer, scheduler, work: str, ema=None) -> int:
    """Load the newest matching checkpoint into model, optimizer and schedule; the step to go on from.
    Under FSDP only the main process reads it and the tensors go from there to every process's shard
    (one whole copy of the trainable state in host memory, not one per process)."""
    from accelerate.utils import broadcast_object_list
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    one_reader = sharded(acc)
    state = ckpt.load_latest() if acc.is_main_process or not one_reader else None
    if one_reader:  # the others learn from the main process whether there is one, its step and schedule
        head = [None if state is None else {"step": state["step"], "scheduler": state["scheduler"]}]
        broadcast_object_list(head)
        if head[0] is not None and state is None:
            state = {**head[0], "trainable": {}, "optimizer": {}}
    if state is None:
        return 0
    # the checkpoint holds the trainable tensors only; anything else in it is a config mismatch
    # (model and optimizer apart: set_state_dict would skip the model on a process given an empty one)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=one_reader, strict=False)
    try:
        unexpected = set_model_state_dict(model, state["trainable"], options=options).unexpected_keys
        set_optimizer_state_dict(model, optimizer.optimizer, state["optimizer"], options=options)
    except (KeyError, RuntimeError, ValueError) as e:
        unexpected = [str(e)]
    if unexpected:
        raise SystemExit(f"checkpoint {ckpt.latest()} does not match this model ({unexpected[:3]}...); delete {work}")
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:  # (the settings' fingerprint holds ema_decay: a checkpoint of this run has it)
        ema.load_state_dict(state["ema"])
        ema.to(acc.device)
    if acc.num_processes == 1 and "rng" in state:  # (the main process's: of no use to the others)
        set_rng_state(state["rng"])
    logging.getLogger("vlv").info("resumed from %s at step %d", ckpt.latest(), int(state["step"]))
    return int(state["step"])


def whole_model(acc, model, rebuild):
    """The trained model, whole, on the CPU in eval mode, on the main process (None on the others).
    Under FSDP every process calls this: the full state dict is gathered from the shards and loaded
    into ``rebuild()``, a fresh copy made from the starting folders; otherwise it is the unwrapped model."""
    if not sharded(acc):
        return acc.unwrap_model(model).cpu().eval() if acc.is_main_process else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not acc.is_main_process:
        return None
    fresh = rebuild()
    fresh.load_state_dict(state)
    return fresh.eval()


def make_accelerator(cpu: bool, precision: str):
    """The stage's Accelerator. Several launched processes on a machine without CUDA run over gloo on
    the CPU (accelerate would otherwise run each as an independent single process); a launch whose
    processes still do not form one group stops here instead of training N copies side by side."""
    from accelerate import Accelerator

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    acc = Accelerator(
        cpu=cpu or (launched > 1 and not torch.cuda.is_available()),
        mixed_precision="bf16" if precision == "bf16" else "no",
    )
    if acc.num_processes != launched:
        raise SystemExit(
            f"launched {launched} processes but accelerate formed a group of {acc.num_processes}: check the "
            "accelerate config (distributed_type) against this machine's devices"
        )
    return acc


def micro_batches(n: int, micro: int | None) -> list[slice]:
    """A process's share of the batch (``n`` items) in passes of at most ``micro`` (gradient accumulation)."""
    if not micro or micro >= n:
        return [slice(0, n)]
    return [slice(i, min(i + micro, n)) for i in range(0, n, micro)]


def accumulate(acc, model, chunks: list[slice], loss_fn) -> torch.Tensor:
    """Backward of ``loss_fn(chunk)`` for each pass, the gradients synchronised across processes on
    the last pass only; returns the summed loss (detached). ``loss_fn`` scales each pass's loss so
    that the sum is the loss of the whole share."""
    total = None
    for j, chunk in enumerate(chunks):
        with acc.no_sync(model) if j < len(chunks) - 1 else contextlib.nullcontext():
            loss = loss_fn(chunk)
            acc.backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
    return total


def finish_step(acc, loss, model, trainable, opt, sched, *, step: int, cfg: dict, run: TrainingRun) -> float:
    """Clip, optimizer and schedule step (after the stage's backward passes); then the finite-loss
    check, the loss log and the periodic checkpoint (main process)."""
    acc.clip_grad_norm_(trainable, cfg["grad_clip"])
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.step(trainable)
    lv = acc.reduce(loss.detach(), reduction="mean").item()
    if not math.isfinite(lv):
        raise RuntimeError(f"{run.stage}: loss is {lv} at step {step}; lower the learning rate")
    if acc.is_main_process and ((step + 1) % cfg["log_every"] == 0 or step + 1 == run.steps):
        run.loss_log.append(step + 1, lv, sched.get_last_lr()[0], time.time() - run.t0)
        run.bar.set_postfix(loss=f"{lv:.4f}")
    if (step + 1) % cfg["checkpoint_every"] == 0 and step + 1 < run.steps:
        save_trainable(acc, run.ckpt, step + 1, model, opt, sched, run.ema)
    acc.wait_for_everyone()
    return lv


@dataclass
class TrainingRun:
    """What ``train`` leaves the stage: the prepared model, the step it resumed from, the seconds
    trained this run (and the loop's own state while it runs)."""

    stage: str
    steps: int
    model: torch.nn.Module
    trainable: list
    start: int
    ckpt: Checkpointer
    loss_log: LossLog | None
    bar: object = None
    t0: float = 0.0
    seconds: float = 0.0
    ema: object = None  # diffusers' EMAModel of the trainable weights, where cfg sets ema_decay


def make_ema(acc, trainable: list, cfg: dict):
    """An exponential moving average of the trainable weights (diffusers' ``EMAModel``: decay
    min(ema_decay, (1 + n) / (10 + n)) after n updates), or None where ``cfg`` sets no ``ema_decay``.
    Not under FSDP, whose processes each hold a shard of the weights."""
    if not cfg.get("ema_decay"):
        return None
    if sharded(acc):
        raise SystemExit("ema_decay is not supported under FSDP: use DDP or a single process, or set it to null")
    from diffusers.training_utils import EMAModel

    return EMAModel(trainable, decay=float(cfg["ema_decay"]))


def train_mode(model: torch.nn.Module) -> torch.nn.Module:
    """Train mode for what trains; eval mode for every part without a trainable parameter, whatever
    its parent's mode. A frozen tower then keeps dropout and drop-path off, as it had them off when
    its features were cached (Florence-2's vision tower has drop-path; a frozen text encoder,
    dropout)."""
    model.train()
    for m in model.modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            m.eval()  # and its children: none of them trains either
    return model


def adamw(params: list, cfg: dict, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with ``cfg``'s lr, betas and weight decay. ``fused`` (one kernel for every tensor's update;
    the same update to float rounding, checked in tests/test_stage1_speed.py) by default where every
    parameter is on a GPU; elsewhere torch's default implementation, so CPU runs keep their bytes."""
    if fused is None:
        fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(
        params, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"], fused=fused or None
    )


def train(
    acc,
    model: torch.nn.Module,
    cfg: dict,
    step_loss: Callable,
    *,
    stage: str,
    work: str | os.PathLike,
    out: str | os.PathLike,
    settings: dict,
    data: object = None,
    batches: Callable[[int], Iterable] | None = None,
    strict: bool = False,
    after_step: Callable[[torch.nn.Module, int], None] | None = None,
) -> TrainingRun:
    """The training loop of every stage: stage 1, stage 2 and the toy stand-ins.

    The stage supplies its model (its trainable parameters set), its batches (``batches(start)``: one
    item per step from the resumed step on; None: the loss needs none) and
    ``step_loss(model, step, batch)``, which runs
    the step's backward passes and returns the loss (detached; ``accumulate`` helps). The loop owns
    the rest: AdamW (``adamw``), the learning-rate schedule
    (``lr_multiplier`` of ``cfg``'s lr_schedule, cosine when absent), ``accelerate.prepare``,
    resuming from the newest checkpoint under ``work`` made with the same ``settings`` (one made with
    other settings is discarded; one made from other ``data``, what identifies the training data, stops
    the run: see ``Checkpointer``), the
    progress bar, clipping, the loss log (``out/loss.csv``), the finite-loss check and the periodic
    checkpoints. Frozen parts stay in eval mode while the model trains (``train_mode``). Where ``cfg``
    sets ``ema_decay``, an EMA of the trainable weights is kept (in the checkpoints too) and copied
    into the model when training ends (``make_ema``).
    ``after_step(model, step)``, if given, runs after each step (the direct captioner's validation).
    The stage then saves its model (``whole_model``) and calls ``finish_training``.
    """
    opt = adamw([p for p in model.parameters() if p.requires_grad], cfg)
    steps = int(cfg["steps"])
    schedule = cfg.get("lr_schedule", "cosine")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_multiplier(schedule, s, steps, cfg["warmup_steps"], cfg["final_lr_ratio"])
    )
    prepared, opt = acc.prepare(model, opt)  # the scheduler stays unprepared: one step per global step
    trainable = [p for p in prepared.parameters() if p.requires_grad]  # FSDP puts sharded ones in their place
    ckpt = Checkpointer(work, fingerprint=fingerprint(settings), data=None if data is None else fingerprint(data))
    ema = make_ema(acc, trainable, cfg)
    start = resume_trainable(acc, ckpt, prepared, opt, sched, str(work), ema)
    loss_log = LossLog(Path(out) / "loss.csv", resume_step=start) if acc.is_main_process else None
    run = TrainingRun(stage, steps, prepared, trainable, start, ckpt, loss_log, ema=ema)
    run.bar = tqdm(range(start, steps), initial=start, total=steps, desc=stage, mininterval=5,
                   disable=not acc.is_main_process)  # fmt: skip
    train_mode(prepared)
    run.t0 = time.time()
    loaded = itertools.repeat(None) if batches is None else batches(start)
    for step, batch in zip(run.bar, loaded, strict=strict):
        loss = step_loss(prepared, step, batch)
        finish_step(acc, loss, prepared, trainable, opt, sched, step=step, cfg=cfg, run=run)
        if after_step is not None:
            after_step(prepared, step)
    run.seconds = time.time() - run.t0
    if ema is not None:  # the model the stage saves is the average
        ema.copy_to(trainable)
    acc.wait_for_everyone()
    return run


def finish_training(acc, run: TrainingRun, out: str | os.PathLike, params: dict, seed: int | None, title: str,
                    caches=(), **extra) -> None:  # fmt: skip
    """On the main process, after the stage saved its model in ``out``: the loss curve, the manifest
    (the run's device, precision, processes, time and resume point, plus the stage's ``extra``), then
    the caches and checkpoints removed (the folder is complete)."""
    if not acc.is_main_process:
        return
    out = Path(out)
    plot_loss(out / "loss.csv", out / "loss.png", title)
    write_manifest(
        out / "manifest.json",
        build_manifest(
            run.stage,
            params,
            seed,
            device=str(acc.device),
            precision="bf16" if acc.mixed_precision == "bf16" else "fp32",
            processes=acc.num_processes,
            distributed_type=acc.distributed_type.value,
            train_seconds_this_run=round(run.seconds, 1),
            resumed_from_step=run.start,
            peak_memory_gib=peak_memory_gib(acc.device),
            **extra,
        ),
    )
    for c in caches:
        c.clear()  # every process is past its last read (train ends with wait_for_everyone)
    run.ckpt.clear()


def end_training(acc, run: TrainingRun) -> None:
    """The last call of a training stage: the prepared (DDP or FSDP) model is let go, then the process
    group is destroyed (``Accelerator.end_training``).

    The order matters. DDP's reducer holds the process group; left to the interpreter's exit, it is
    the last holder, and it destroys the group with the GIL held while gloo's worker thread waits for
    the GIL to release the tensors of a finished collective: the process never exits. (Seen on one in
    seven two-machine runs on 2 loaded cores: the worker at exit in ``~ProcessGroupGloo`` joining
    ``runLoop``, which waited in a tensor ``decref``; the machine-0 launcher in its exit barrier.)
    Let go here, the group's last holder is torch's registry, whose Python object releases the GIL
    before destroying it."""
    wrapper = weakref.ref(run.model)
    run.model = None
    acc.free_memory()
    gc.collect()
    if wrapper() is not None and acc.num_processes > 1:
        logging.getLogger("vlv").warning(
            "the prepared model is still referenced at the end of training: the exit may hang"
        )
    acc.end_training()


def peak_memory_gib(device: torch.device) -> float | None:
    """The most device memory this process's tensors held (CUDA), in GiB; None elsewhere."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def fingerprint(params) -> str:
    """A short hash of a stage's settings (or any JSON value), to tie checkpoints and caches to them."""
    import json

    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


class Checkpointer:
    """Keeps the newest ``keep`` checkpoints under ``directory`` and resumes from the newest.

    ``directory`` should be outside Snakemake's declared outputs, which it deletes on failure.
    Each checkpoint is written to a temporary name, synced to the disk and renamed, so a kill or a
    power loss mid-write leaves the previous one intact; a newest checkpoint that cannot be read all
    the same (a disk error, a copy cut short) is set aside as ``*.corrupt`` with a warning and the one
    before it is resumed. Loading uses ``weights_only=True``.
    """

    # What the stages store changed (3: the toy stand-ins' too through torch's state-dict API, every
    # checkpoint with the RNG state; 2: the optimizer's state keyed by parameter name, the same under
    # FSDP; before: by position): older checkpoints are discarded.
    FORMAT = 3

    def __init__(
        self, directory: str | os.PathLike, keep: int = 2, fingerprint: str | None = None, data: str | None = None
    ):
        self.dir = Path(directory)
        self.keep = keep
        # A checkpoint is resumed only by a run with the same settings (e.g. the same JSON params);
        # one left by a run with other settings is discarded instead of silently continued.
        self.fingerprint = fingerprint
        # ... and from the same training data: a checkpoint made from other data stops the run (it is
        # kept: the data may be what changed by mistake).
        self.data = data

    def _all(self) -> list[Path]:
        if not self.dir.exists():
            return []
        return sorted(self.dir.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))

    def latest(self) -> Path | None:
        found = self._all()
        return found[-1] if found else None

    def save(self, step: int, state: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step-{step:08d}.pt"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            torch.save({"step": step, "fingerprint": self.fingerprint, "data": self.data, "format": self.FORMAT,
                        **state}, f)  # fmt: skip
            f.flush()
            os.fsync(f.fileno())  # the bytes on the disk before the name says they are there
        tmp.replace(path)
        _fsync_dir(self.dir)
        for old in self._all()[: -self.keep]:
            old.unlink()
        return path

    def load_latest(self) -> dict | None:
        state = None
        while state is None and (path := self.latest()) is not None:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 (any unreadable file: zip, pickle or disk errors)
                path.replace(path.with_suffix(".corrupt"))
                logging.getLogger("vlv").warning(
                    "checkpoint %s cannot be read (%s: %s); set aside as .corrupt, trying the one before it",
                    path, type(e).__name__, e,
                )  # fmt: skip
        if state is None:
            return None
        if state.get("fingerprint") != self.fingerprint or state.get("format") != self.FORMAT:
            logging.getLogger("vlv").warning(
                "ignoring checkpoints in %s: they were made with other settings or an older format", self.dir
            )
            self.clear()
            return None
        if "data" not in state:  # made before checkpoints recorded their data: resumed unchecked
            logging.getLogger("vlv").warning(
                "the checkpoints in %s do not record their training data: not checked", self.dir
            )
        elif state["data"] != self.data:
            raise SystemExit(
                f"the checkpoints in {self.dir} were made from other training data than this run's (the images, "
                f"the subset or the captions changed since). To start over, delete {self.dir}; to go on from "
                "them, restore the data they were made from"
            )
        return state

    def clear(self) -> None:
        """Remove the checkpoints (other things kept in the folder, such as caches, stay)."""
        found = (
            [*self._all(), *self.dir.glob("step-*.tmp"), *self.dir.glob("step-*.corrupt")] if self.dir.exists() else []
        )
        for f in found:
            f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only when nothing else is left in it


def _fsync_dir(directory: Path) -> None:
    """Sync a folder's entries (a rename) to the disk, where the system allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rng_state() -> dict:
    """Every random generator a step may draw from: torch's (CPU and CUDA), NumPy's and Python's. (The
    data position is the step itself: each step's batch is a function of the seed and the step.)"""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state_tensors(np.random.get_state()),
        "python": _python_state_tensor(random.getstate()),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:  # (checkpoints made before these were recorded have only torch's)
        keys, pos, gauss = state["numpy"]["keys"], state["numpy"]["pos"], state["numpy"]["gauss"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), int(pos), int(gauss[0]), float(gauss[1])))
    if "python" in state:
        *words, has_gauss, gauss = state["python"].tolist()
        random.setstate((3, tuple(int(w) for w in words), gauss if has_gauss else None))


def _numpy_state_tensors(st) -> dict:
    """NumPy's legacy generator state as tensors (a ``weights_only`` load reads tensors, not arrays)."""
    _, keys, pos, has_gauss, gauss = st
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": torch.tensor(pos),
        "gauss": torch.tensor([float(has_gauss), gauss], dtype=torch.float64),
    }


def _python_state_tensor(st) -> torch.Tensor:
    """Python's generator state (version 3: 625 words, then whether a Gauss draw is kept and its value)
    as a tensor (float64 holds every 32-bit word exactly)."""
    _, words, gauss_next = st
    return torch.tensor([*words, gauss_next is not None, gauss_next or 0.0], dtype=torch.float64)


class LossLog:
    """Appends ``step,loss,lr,seconds`` rows; on resume, drops rows past the resumed step."""

    def __init__(self, path: str | os.PathLike, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if resume_step > 0 and self.path.exists():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with self.path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "lr", "seconds"])
            for r in rows:
                w.writerow([r["step"], r["loss"], r["lr"], r["seconds"]])

    def append(self, step: int, loss: float, lr: float, seconds: float) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([step, f"{loss:.6f}", f"{lr:.3e}", f"{seconds:.2f}"])


def plot_loss(csv_path: str | os.PathLike, png_path: str | os.PathLike, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="loss")
    if len(loss) >= 20:
        k = max(5, len(loss) // 30)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
