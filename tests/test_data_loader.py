"""The training stages' data path: random access into tar shards, loader workers, step batches,
the on-disk feature cache."""

import json
import tarfile
import threading

import numpy as np
import pytest
import torch

from vlv.data.loader import (
    Collate,
    FeatureCache,
    ShardImages,
    StepBatches,
    StepData,
    as_is,
    gather,
    make_loader,
)
from vlv.data.shards import BadImage, ShardIndex, encode_png, iter_batches, load_images, write_shard
from vlv.stages import generate_shapes


@pytest.fixture(scope="module")
def pool(micro_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "pool"
    args = ["--params", json.dumps(micro_config["shapes"]), "--split", "pool", "--out", str(out)]
    assert generate_shapes.main(args) == 0
    return out


def _mean_pixel(images):
    return torch.from_numpy(np.stack(images)).float().mean(dim=(1, 2, 3))


def test_index_reads_every_image_as_the_in_memory_loader_does(pool):
    keys, images, _ = load_images(pool)
    index = ShardIndex(pool)
    assert len(index.paths) > 1  # the samples span several shards
    assert index.keys == keys
    data = ShardImages(index)
    assert all(np.array_equal(data[i], images[i]) for i in range(len(keys)))
    # a key subset keeps shard order, and what is not there is named
    wanted = [keys[7], keys[2], "nope"]
    sub = ShardIndex(pool, wanted)
    assert sub.keys == [keys[2], keys[7]] and sub.missing(wanted) == ["nope"]
    assert np.array_equal(ShardImages(sub)[1], images[7])


def test_loader_workers_give_the_batches_of_the_inline_loader(pool):
    _, images, _ = load_images(pool)
    data = ShardImages(ShardIndex(pool), max_open=1)  # evicting open shards on the way
    batches = StepBatches(len(data), seed=3, batch_size=6, start=0, steps=5)
    collate = Collate(_mean_pixel, str(pool))
    inline = list(make_loader(data, batches, collate, workers=0))
    two = list(make_loader(data, batches, collate, workers=2))
    assert len(inline) == len(two) == 5
    for step, ((u8_a, f_a), (u8_b, f_b)) in enumerate(zip(inline, two)):
        want = images[batches.mine(step)]
        assert np.array_equal(u8_a.numpy(), want) and torch.equal(u8_a, u8_b) and torch.equal(f_a, f_b)


def test_step_batches_split_one_global_batch_and_resume_mid_run():
    one = StepBatches(50, seed=1, batch_size=8, start=0, steps=6)
    ranks = [StepBatches(50, seed=1, batch_size=8, start=0, steps=6, rank=r, world=2) for r in range(2)]
    for step, (full, a, b) in enumerate(zip(one, *ranks)):
        assert full == a + b == one.global_batch(step).tolist()
    assert len({tuple(x) for x in one}) == 6  # the steps differ
    resumed = StepBatches(50, seed=1, batch_size=8, start=4, steps=6)
    assert list(resumed) == list(one)[4:] and len(resumed) == 2


def test_a_batch_of_mixed_sizes_is_refused_with_what_to_do(tmp_path):
    def sample(side):
        return {"png": encode_png(np.zeros((side, side, 3), np.uint8)), "json": b"{}"}

    write_shard(tmp_path / "shard-000000.tar", [("a", sample(8)), ("b", sample(16))])
    data = ShardImages(ShardIndex(tmp_path))
    with pytest.raises(BadImage, match="different sizes.*data.image_size"):
        next(iter(make_loader(data, [[0, 1]], Collate(_mean_pixel, str(tmp_path)), workers=0)))
    with pytest.raises(BadImage, match="different sizes"):
        next(iter_batches(tmp_path, 2))
    # streamed one batch at a time, skipping what is done
    assert [k for k, _, _ in iter_batches(tmp_path, 1, skip={"a"})] == [["b"]]


class _Features:
    """A stand-in frozen function of a batch that counts the images it saw and can fail on one chunk."""

    def __init__(self, fail_on_chunk=None):
        self.seen, self.fail_on_chunk, self.calls = 0, fail_on_chunk, 0

    def __call__(self, batch):
        self.calls += 1
        self.largest = max(getattr(self, "largest", 0), len(batch[0]))
        if self.calls == self.fail_on_chunk:
            raise KeyboardInterrupt("simulated kill")
        u8 = batch[0]
        self.seen += len(u8)
        return u8.float().mean(dim=3)  # N x H x W


def _loader_for(data):
    collate = Collate(_mean_pixel, "test")
    return lambda chunks: make_loader(data, chunks, collate, workers=0)


def test_feature_cache_resumes_after_a_kill_and_rebuilds_for_other_inputs(pool, tmp_path):
    data = ShardImages(ShardIndex(pool))
    n = len(data)
    chunk = 16
    assert n > 3 * chunk  # several chunks
    want = torch.from_numpy(np.stack([data[i] for i in range(n)])).float().mean(dim=3)

    killed = _Features(fail_on_chunk=3)
    with pytest.raises(KeyboardInterrupt):
        FeatureCache(tmp_path / "c", "inputs-1", chunk=chunk).build(n, _loader_for(data), killed, "test")
    assert killed.seen == 2 * chunk

    rest = _Features()
    cache = FeatureCache(tmp_path / "c", "inputs-1", chunk=chunk).build(n, _loader_for(data), rest, "test")
    assert rest.seen == n - 2 * chunk  # the two finished chunks were not redone
    assert torch.equal(torch.from_numpy(np.array(cache)), want)
    assert torch.equal(gather(cache, [5, 1, 5]), want[[5, 1, 5]])

    again = _Features()
    FeatureCache(tmp_path / "c", "inputs-1", chunk=chunk).build(n, _loader_for(data), again, "test")
    assert again.seen == 0  # complete: nothing recomputed
    other = _Features()
    FeatureCache(tmp_path / "c", "inputs-2", chunk=chunk).build(n, _loader_for(data), other, "test")
    assert other.seen == n and other.largest == chunk  # made from other inputs: rebuilt
    pieces = _Features()  # a chunk fed to the model a few images at a time: the same rows
    cache = FeatureCache(tmp_path / "p", "inputs-1", chunk=chunk).build(n, _loader_for(data), pieces, "test", piece=5)
    assert pieces.largest == 5 and pieces.seen == n
    assert torch.equal(torch.from_numpy(np.array(cache)), want)


def test_feature_cache_is_filled_by_all_processes_together(pool, tmp_path):
    data = ShardImages(ShardIndex(pool))
    n = len(data)
    barrier = threading.Barrier(2)
    fns, results, errors = [_Features(), _Features()], [None, None], []

    def process(rank):  # a thread standing for a process: its own dataset, so its own open shard files
        try:
            cache = FeatureCache(tmp_path / "c", "inputs", rank=rank, world=2, barrier=barrier.wait, chunk=8)
            mine = ShardImages(ShardIndex(pool))
            results[rank] = np.asarray(cache.build(n, _loader_for(mine), fns[rank], "test"))
        except Exception as e:  # reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=process, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert not errors, errors
    assert fns[0].seen + fns[1].seen == n and min(fns[0].seen, fns[1].seen) > 0  # shared, no chunk twice
    want = np.stack([data[i] for i in range(n)]).astype(np.float32).mean(axis=3)
    assert np.array_equal(results[0], want) and np.array_equal(results[1], want)


def test_feature_cache_file_is_never_seen_half_made(pool, tmp_path, monkeypatch):
    """Another process looks for ``features.npy`` while rank 0 creates it; it must find either nothing
    or a readable array. numpy's ``open_memmap(mode="w+")`` creates its file empty and writes the
    header afterwards: stop in that window and look as the other process would."""
    data = ShardImages(ShardIndex(pool))
    cache = FeatureCache(tmp_path / "c", "inputs", chunk=16)
    create, seen = np.lib.format.open_memmap, []

    def create_with_a_look_inside(filename, mode="r+", *args, **kwargs):
        if mode == "w+":
            open(filename, "wb").close()  # the file as numpy first makes it: no header yet
            if cache.array_path.exists():
                try:
                    np.load(cache.array_path, mmap_mode="r")
                    seen.append("readable")
                except ValueError as e:  # EOF: reading magic string
                    seen.append(f"half made: {e}")
        return create(filename, mode, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "open_memmap", create_with_a_look_inside)
    rows = cache.build(len(data), _loader_for(data), _Features(), "test")
    assert seen == []  # the name the others look for did not exist yet
    assert cache.array_path.exists() and rows.shape[0] == len(data)


def test_a_bf16_cache_and_step_data_give_each_step_its_rows_in_workers_as_inline(pool, tmp_path):
    """A bf16 cache keeps its values' bf16 bits (half a float32 cache's bytes) and is not continued as a
    float32 one; StepData gives each step the images and every cache's rows, the same from a loader
    worker (which opens the cache files itself) as inline, and pinned where asked."""
    data = ShardImages(ShardIndex(pool))
    n = len(data)
    want = torch.from_numpy(np.stack([data[i] for i in range(n)])).float().mean(dim=3) / 7
    fn = lambda batch: batch[0].float().mean(dim=3) / 7  # noqa: E731
    half = FeatureCache(tmp_path / "h", "x", chunk=16, dtype=torch.bfloat16)
    rows = half.build(n, _loader_for(data), fn, "test")
    assert rows.dtype == np.int16 and half.array_path.stat().st_size < 0.6 * want.numel() * 4
    assert torch.equal(gather(rows, [3, 0]), want[[3, 0]].to(torch.bfloat16))
    assert not torch.equal(want.to(torch.bfloat16).float(), want)  # the rounding is real
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        FeatureCache(tmp_path / "f16", "x", dtype=torch.float16)
    full = FeatureCache(tmp_path / "h", "x", chunk=16)  # the same folder and inputs, float32: rebuilt
    assert torch.equal(gather(full.build(n, _loader_for(data), fn, "test"), [3]), want[[3]])

    half = FeatureCache(tmp_path / "h2", "x", chunk=16, dtype=torch.bfloat16)
    half.build(n, _loader_for(data), fn, "test")
    files = {"features": full.array_path, "half": half.array_path}
    for images in (data, None):
        step = StepData(n, images, Collate(_mean_pixel, "test"), files)
        batches = StepBatches(n, seed=1, batch_size=5, start=0, steps=3)
        inline = list(make_loader(step, batches, as_is, workers=0))
        worker = list(make_loader(step, batches, as_is, workers=1))
        assert len(inline) == len(worker) == 3
        for s, (a, b) in enumerate(zip(inline, worker, strict=True)):
            assert a.keys() == b.keys() == ({"features", "half"} | ({"images", "pixel_values"} if images else set()))
            assert all(torch.equal(a[k], b[k]) for k in a)
            assert torch.equal(a["features"], want[batches.mine(s)]) and a["half"].dtype == torch.bfloat16
    if torch.cuda.is_available():  # pinned batches, for asynchronous copies
        assert next(iter(make_loader(step, batches, as_is, 0, pin_memory=True)))["half"].is_pinned()


def test_a_cut_short_shard_is_read_up_to_the_break_and_reported(pool, tmp_path, monkeypatch, caplog):
    """A shard cut short (a partial copy, a full disk) or empty: every reader uses the samples before
    the break, leaves out the rest, warns once, and every stage's manifest then lists the shard."""
    import shutil

    from vlv.data import shards
    from vlv.manifest import build_manifest

    monkeypatch.setattr(shards, "_BROKEN", {})  # this test's reports only
    copy = tmp_path / "pool"
    shutil.copytree(pool, copy)
    full = ShardIndex(copy).keys
    cut = sorted(copy.glob("shard-*.tar"))[1]
    in_cut = sum(1 for _ in shards.iter_shard(cut))
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.6)])
    index = ShardIndex(copy)
    streamed = [k for k, _ in shards.iter_dir(copy)]
    assert len(full) - in_cut < len(index) < len(full) and set(index.keys) <= set(full)
    assert streamed == index.keys  # both leave out the sample that was being read at the break
    assert all(np.array_equal(ShardImages(index)[i], ShardImages(ShardIndex(pool))[i]) for i in range(len(index)))
    whole = (pool / cut.name).read_bytes()
    for share in (0.2, 0.35, 0.5, 0.65, 0.8, 0.95):  # breaks in headers, in image bytes, between samples
        cut.write_bytes(whole[: int(len(whole) * share)])  # (0.35: at a member boundary, where tarfile
        monkeypatch.setattr(shards, "_BROKEN", {})  # stops without an error: found by the missing end)
        keys = ShardIndex(copy).keys
        assert [k for k, _ in shards.iter_dir(copy)] == keys, share
        lost = keys != full  # (0.95 cuts only the closing padding: nothing lost, nothing to report)
        assert [b["shard"] for b in shards.broken_shards()] == ([str(cut)] if lost else []), share
    monkeypatch.setattr(shards, "_BROKEN", {})
    caplog.clear()
    cut.write_bytes(whole[: int(len(whole) * 0.6)])
    ShardIndex(copy), list(shards.iter_dir(copy))
    [report] = shards.broken_shards()
    assert report["shard"] == str(cut) and 0 < report["samples_read"] < in_cut and "Error" in report["error"]
    assert caplog.text.count("is broken after") == 1  # reported once, however often it is read
    with pytest.raises(tarfile.ReadError):
        list(shards.iter_shard(cut, strict=True))
    (copy / "shard-99999.tar").write_bytes(b"")  # an empty file named as a shard: nothing from it
    assert ShardIndex(copy).keys == index.keys and len(shards.broken_shards()) == 2
    assert build_manifest("x", {}, 0)["broken_shards"] == shards.broken_shards()
    monkeypatch.setattr(shards, "_BROKEN", {})
    assert "broken_shards" not in build_manifest("x", {}, 0)
