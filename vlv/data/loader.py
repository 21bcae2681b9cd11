"""The training stages' data path: images read at random from tar shards by loader workers, each step's
batch a pure function of (seed, step), and what is frozen and deterministic cached on disk.

- ``ShardImages``: a map-style dataset over a ``ShardIndex`` (byte offsets from the tar headers);
  an item is read with one seek and decoded in the worker. Memory does not grow with the split.
- ``StepBatches``: the batch sampler. Step ``s`` draws ``batch_size`` positions uniformly (with
  replacement) from ``default_rng([seed, s])``; process ``rank`` takes its slice. So 1 and N
  processes see the same global batch, a resumed run the same batches as an uninterrupted one, and
  any number of loader workers the same data.
- ``FeatureCache``: a float32 (or bf16) array on disk (``.npy``, memory-mapped), filled in order in
  chunks by a frozen function of the images (stage 1: the VAE latent distributions and the vision
  tower's features; stage 2: the frozen encoder's caption input), resumed from the last finished
  chunk, tied by a fingerprint to what it was made from.
- ``StepData``: what one step reads, as a dict: the images (decoded and preprocessed) and the rows
  of each cache, gathered in a loader worker and pinned, so the device does not wait on the host.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .shards import ShardIndex, decode_image, stack_images

CACHE_CHUNK = 256  # images per pass when filling a cache (as the in-memory caches did: the same values)


class ShardImages(torch.utils.data.Dataset):
    """Item ``i`` of a ``ShardIndex`` as a uint8 HxWx3 array. Each process (main or loader worker)
    opens the shards it reads itself and keeps at most ``max_open`` of them open."""

    def __init__(self, index: ShardIndex, max_open: int = 64):
        self.paths = index.paths
        self.shard, self.offset, self.size = index.shard, index.offset, index.size
        self.max_open = max_open
        self._files: OrderedDict[int, object] = OrderedDict()
        self._pid = None

    def __len__(self) -> int:
        return len(self.shard)

    def _file(self, s: int):
        if self._pid != os.getpid():  # a forked worker must not share the parent's file positions
            self._files, self._pid = OrderedDict(), os.getpid()
        f = self._files.pop(s, None)
        if f is None:
            f = open(self.paths[s], "rb")  # noqa: SIM115 (kept open across items, closed on eviction)
            if len(self._files) >= self.max_open:
                self._files.popitem(last=False)[1].close()
        self._files[s] = f
        return f

    def __getitem__(self, i: int) -> np.ndarray:
        f = self._file(int(self.shard[i]))
        f.seek(int(self.offset[i]))
        return np.asarray(decode_image(f.read(int(self.size[i]))))

    def __getstate__(self):
        return {**self.__dict__, "_files": OrderedDict(), "_pid": None}


class Collate:
    """A batch of images -> (uint8 NxHxWx3 tensor, the vision processor's pixel_values); runs in the
    loader worker, so decoding and preprocessing overlap the training step."""

    def __init__(self, preprocess: Callable[[list[np.ndarray]], torch.Tensor], where: str):
        self.preprocess, self.where = preprocess, where

    def __call__(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = stack_images(images, self.where)
        return torch.from_numpy(batch), self.preprocess(list(batch))


class StepBatches:
    """This process's positions for each step from ``start`` to ``steps`` (a DataLoader batch sampler)."""

    def __init__(self, n: int, seed: int, batch_size: int, start: int, steps: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.start, self.steps = start, steps
        self.per_proc = batch_size // world
        self.rank = rank

    def global_batch(self, step: int) -> np.ndarray:
        return np.random.default_rng([self.seed, step]).integers(self.n, size=self.batch_size)

    def mine(self, step: int) -> np.ndarray:
        return self.global_batch(step)[self.rank * self.per_proc : (self.rank + 1) * self.per_proc]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            yield self.mine(step).tolist()

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def make_loader(dataset, batches, collate, workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over explicit batches of positions; ``workers`` processes decode ahead (0: in this one);
    ``pin_memory``: batches in page-locked memory, for asynchronous copies to a GPU."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),  # its seed draw must not move the global RNG (dropout)
    )


def data_stamp(index: ShardIndex, **extra) -> dict:
    """What identifies a run's training data, cheaply: a digest of its keys in order, each shard's name
    and size, and ``extra`` (e.g. a digest of the captions). Modification times are left out, so a
    restored copy of the same data (``dvc checkout``) is the same data."""
    import hashlib

    keys = hashlib.sha256("\n".join(index.keys).encode()).hexdigest()
    return {"keys": keys, "shards": [[Path(p).name, Path(p).stat().st_size] for p in index.paths], **extra}


def path_stamp(path: str) -> object:
    """What identifies a model argument's contents cheaply: for a local folder, each file's name, size
    and modification time (a rerun that rewrites it changes the stamp); for a hub id, the id."""
    p = Path(path)
    if not p.exists():
        return path
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return [[str(f.relative_to(p.parent)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


class FeatureCache:
    """``fn`` of every image of a dataset, in dataset order, as a float32 array on disk.

    Filled in chunks of ``chunk`` images; with several processes, process ``rank`` fills chunks
    ``rank, rank + world, ...`` of the one shared file. After each chunk the array is flushed and the
    process's ``done-<rank>.json`` records how many of its chunks are finished, so a killed job goes on
    from there. A cache made from other inputs or by another number of processes (``fingerprint``)
    is discarded and rebuilt. ``barrier`` is the process group's (``Accelerator.wait_for_everyone``).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        fingerprint: str,
        rank: int = 0,
        world: int = 1,
        barrier=None,
        chunk: int = CACHE_CHUNK,
        dtype: torch.dtype = torch.float32,
    ):
        """``dtype``: float32, or bfloat16 (half the disk and host-to-device traffic; stored as its int16
        bit patterns, numpy having no bf16, and read back as bf16 by ``gather``)."""
        if dtype not in STORED:
            raise ValueError(f"a cache holds float32 or bfloat16, not {dtype}")
        self.dir = Path(directory)
        self.chunk = chunk
        self.dtype = dtype
        self.fingerprint = f"{fingerprint}-w{world}" + ("" if dtype == torch.float32 else f"-{dtype}")
        self.rank, self.world = rank, world
        self.barrier = barrier or (lambda: None)
        self.array_path = self.dir / "features.npy"
        self.meta_path = self.dir / "cache.json"

    def _write_json(self, path: Path, value: dict) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)

    def build(
        self, n: int, loader_for: Callable[[list[list[int]]], object], fn, desc: str, piece: int | None = None
    ) -> np.ndarray:
        """Fill (or finish) the cache for ``n`` images; returns it memory-mapped read-only. ``fn`` maps a
        loader batch (a tuple of tensors, one chunk of images) to its rows; with ``piece`` it sees at most
        that many images at a time (a chunk at 384 px through the VAE at once is tens of GB)."""
        if piece:
            whole = fn

            def fn(batch):
                return torch.cat(
                    [whole(tuple(x[i : i + piece] for x in batch)) for i in range(0, len(batch[0]), piece)]
                )

        if self.rank == 0:  # one process decides whether the file on disk can be continued
            meta = json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {}
            if meta.get("fingerprint") != self.fingerprint or not self.array_path.exists():
                if meta:
                    logging.getLogger("vlv").warning("discarding the cache in %s: made from other inputs", self.dir)
                self.clear()
        self.barrier()
        all_chunks = [list(range(i, min(i + self.chunk, n))) for i in range(0, n, self.chunk)]
        mine = all_chunks[self.rank :: self.world]
        done_path = self.dir / f"done-{self.rank}.json"
        done = json.loads(done_path.read_text())["chunks"] if done_path.exists() else 0
        todo = mine[done:]
        array = None
        if self.array_path.exists():
            array = np.lib.format.open_memmap(self.array_path, mode="r+")
        elif self.rank == 0:  # the shape comes from the first chunk's values
            first = todo[0]
            with torch.no_grad():
                values = self._stored(fn(next(iter(loader_for([first])))))
            self.dir.mkdir(parents=True, exist_ok=True)
            # made under another name and moved into place whole: another process that looks for the
            # file now must not find it before its header is written (it would open an empty file)
            partial = self.dir / "features.partial.npy"
            array = np.lib.format.open_memmap(partial, mode="w+", dtype=values.dtype, shape=(n, *values.shape[1:]))
            array[first[0] : first[-1] + 1] = values
            array.flush()
            partial.replace(self.array_path)  # the mapping stays on the same file
            self._write_json(self.meta_path, {"fingerprint": self.fingerprint, "n": n})
            done, todo = done + 1, todo[1:]
            self._write_json(done_path, {"chunks": done})
        self.barrier()
        if array is None:
            array = np.lib.format.open_memmap(self.array_path, mode="r+")
        bar = tqdm(total=len(mine), initial=done, desc=desc, unit="chunk", mininterval=5, disable=self.rank != 0)
        for positions, batch in zip(todo, loader_for(todo) if todo else [], strict=True):
            with torch.no_grad():
                array[positions[0] : positions[-1] + 1] = self._stored(fn(batch))
            array.flush()
            done += 1
            self._write_json(done_path, {"chunks": done})
            bar.update(1)
        bar.close()
        del array
        self.barrier()
        return np.load(self.array_path, mmap_mode="r")

    def _stored(self, values: torch.Tensor) -> np.ndarray:
        return values.to(self.dtype).cpu().view(STORED[self.dtype]).numpy()

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


STORED = {torch.float32: torch.float32, torch.bfloat16: torch.int16}  # a cache's dtype -> its numpy bits


def gather(cache: np.ndarray, positions) -> torch.Tensor:
    """Rows of a (memory-mapped) cache as a tensor (bf16 where the cache holds bf16 bit patterns)."""
    rows = torch.from_numpy(np.ascontiguousarray(cache[np.asarray(positions)]))
    return rows.view(torch.bfloat16) if rows.dtype == torch.int16 else rows


class StepData(torch.utils.data.Dataset):
    """What a step reads for a batch of positions, as one dict: ``images`` and ``pixel_values``
    (``collate`` of the decoded images; only with ``images``) and, for each named cache file, its rows
    (``gather``). A loader worker builds it, so the shard reads and the cache gathers overlap the step;
    the caches are opened in the process that reads them (a memory map would be copied into a worker)."""

    def __init__(self, n: int, images: ShardImages | None, collate, caches: dict[str, Path]):
        self.n, self.images, self.collate, self.caches = n, images, collate, caches
        self._open: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        for name, path in self.caches.items():
            if name not in self._open:
                self._open[name] = np.load(path, mmap_mode="r")
        batch = {name: gather(array, positions) for name, array in self._open.items()}
        if self.images is not None:
            batch["images"], batch["pixel_values"] = self.collate([self.images[i] for i in positions])
        return batch

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}


def as_is(batch):
    """A DataLoader's collate_fn for datasets that build whole batches (``__getitems__``)."""
    return batch
