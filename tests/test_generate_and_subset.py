import json
import tarfile

import pytest

from vlv.config import stage_params
from vlv.data.shards import BadImage, decode_image, encode_png, iter_dir, iter_shard, write_shard
from vlv.stages import generate_shapes, subset


def _generate(micro_config, split, out):
    assert (
        generate_shapes.main(["--params", json.dumps(micro_config["shapes"]), "--split", split, "--out", str(out)]) == 0
    )


def test_generate_shapes_is_byte_identical_across_runs(micro_config, tmp_path):
    _generate(micro_config, "eval", tmp_path / "a")
    _generate(micro_config, "eval", tmp_path / "b")
    for name in ("shard-00000.tar", "scenes.jsonl", "captions_coco.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    coco = json.loads((tmp_path / "a" / "captions_coco.json").read_text())
    n = micro_config["shapes"]["splits"]["eval"]["n"]
    assert len(coco["images"]) == n
    assert len(coco["annotations"]) == n * micro_config["shapes"]["eval_references"]
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["samples"] == n and man["seed"] == 3 and "torch" in man["packages"]


def test_shards_hold_image_and_scene_per_sample(micro_config, tmp_path):
    _generate(micro_config, "pool", tmp_path / "pool")
    samples = list(iter_dir(tmp_path / "pool"))
    assert len(samples) == micro_config["shapes"]["splits"]["pool"]["n"]
    key, parts = samples[0]
    assert set(parts) == {"png", "json"}
    meta = json.loads(parts["json"])
    assert meta["scene"]["objects"] and meta["teacher_caption"].startswith("The image shows")
    assert decode_image(parts["png"]).size == (32, 32)
    for _, parts in samples:
        scene = json.loads(parts["json"])["scene"]
        n = len(scene["objects"])
        # every ordered pair of objects in different cells has a relation
        assert len(scene["relations"]) == n * (n - 1)
        for r in scene["relations"]:
            a, b = scene["objects"][r["subject"]], scene["objects"][r["object"]]
            assert ("above" in r["relation"]) == (a["row"] < b["row"])
            assert ("left of" in r["relation"]) == (a["col"] < b["col"])


def test_decode_image_rejects_truncated_and_garbage_bytes():
    png = encode_png(__import__("numpy").zeros((8, 8, 3), "uint8"))
    with pytest.raises(BadImage):
        decode_image(png[: len(png) // 2])
    with pytest.raises(BadImage):
        decode_image(b"not an image at all")


def _saved(img, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_image_shows_odd_images_as_they_are_meant_to_be_seen(monkeypatch):
    """16-bit images scaled (not clipped to white), transparency over white, EXIF orientation applied,
    and an image over PIL's decompression-bomb limit refused instead of decoded with a warning."""
    import numpy as np
    from PIL import Image

    ramp = np.tile(np.linspace(0, 255, 64), (32, 1))  # a grey ramp, dark to light
    eight = np.asarray(decode_image(_saved(Image.fromarray(ramp.astype(np.uint8)), "PNG")), dtype=float)
    sixteen = decode_image(_saved(Image.fromarray((ramp * 257).astype(np.uint16)), "PNG"))
    assert sixteen.mode == "RGB" and np.abs(np.asarray(sixteen, dtype=float) - eight).max() <= 1
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, hidden by alpha 0 on the left half
    rgba[:, 4:, 3] = 255
    out = np.asarray(decode_image(_saved(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert (out[:, :4] == 255).all() and (out[:, 4:] == [255, 0, 0]).all()
    tall = np.zeros((16, 8, 3), np.uint8)
    tall[:4] = 255  # white on top
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show the picture rotated 90 degrees clockwise
    turned = decode_image(_saved(Image.fromarray(tall), "JPEG", exif=exif, quality=95))
    assert turned.size == (16, 8) and np.asarray(turned)[:, -4:].mean() > 200 > np.asarray(turned)[:, :4].mean()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # warns above 100 pixels, fails above 200
    with pytest.raises(BadImage, match="too large"):
        decode_image(_saved(Image.fromarray(tall), "PNG"))  # 128 pixels: PIL only warns
    assert decode_image(_saved(Image.fromarray(tall[:12]), "PNG")).size == (8, 12)  # 96 pixels


def _pool_with_bad_samples(micro_config, tmp_path):
    """The micro pool plus a shard holding a corrupt, a truncated, a tiny and a wide image."""
    pool = tmp_path / "pool"
    _generate(micro_config, "pool", pool)
    import numpy as np

    noisy = encode_png(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    write_shard(
        pool / "shard-00099.tar",
        [
            ("bad00001", {"png": b"\x89PNG\r\n\x1a\n garbage"}),
            ("bad00002", {"png": noisy[: int(len(noisy) * 0.6)]}),
            ("bad00003", {"png": encode_png(np.zeros((8, 8, 3), np.uint8))}),
            ("bad00004", {"png": encode_png(np.zeros((32, 96, 3), np.uint8))}),
            ("bad00005", {"json": b"{}"}),
        ],
    )
    return pool


def _run_subset(cfg, pool, out, root):
    clip = str(root / "models/toy/clip")
    assert subset.main(["--params", json.dumps(cfg), "--images", str(pool), "--clip", clip, "--out", str(out)]) == 0
    return json.loads((out / "subset.json").read_text())


def test_subset_skips_and_explains_every_bad_image(micro_config, tmp_path, root):
    pool = _pool_with_bad_samples(micro_config, tmp_path)
    params = {**stage_params(micro_config, "subset"), "max_bad_share": 0.05}  # 3 bad files of 69
    res = _run_subset(params, pool, tmp_path / "subset", root)
    reasons = {r["key"]: r["reason"] for r in res["rejected"]}
    assert reasons["bad00001"].startswith("undecodable image")
    assert reasons["bad00002"].startswith("undecodable image")
    assert reasons["bad00003"].startswith("too small")
    assert reasons["bad00004"].startswith("aspect ratio 3.00")
    assert reasons["bad00005"] == "no image member in the sample"
    n_pool = micro_config["shapes"]["splits"]["pool"]["n"]
    top_n = micro_config["subset"]["top_n"]
    assert res["counts"]["kept"] == top_n and res["counts"]["seen"] == n_pool + 5
    assert sum(r["reason"].startswith("below the top") for r in res["rejected"]) == n_pool - top_n
    scores = [r["clip_score"] for r in res["kept"]]
    assert scores == sorted(scores, reverse=True)
    kept_min = min(scores)
    assert all(r["clip_score"] <= kept_min for r in res["rejected"] if "clip_score" in r)


def test_subset_stops_naming_the_bad_files_when_more_than_the_allowed_share_is_bad(micro_config, tmp_path, root):
    """3 bad files (two undecodable, one without an image) of 69 samples: 4.3 %, over the default 1 %.
    The turned-down images (too small, too wide) are the filters' choice, not bad files."""
    pool = _pool_with_bad_samples(micro_config, tmp_path)
    params = stage_params(micro_config, "subset")
    assert params["max_bad_share"] == 0.01
    with pytest.raises(SystemExit, match=r"3 of 69 samples are bad \(4.3 %, more than data.max_bad_share 1.0 %\)") as e:
        _run_subset(params, pool, tmp_path / "subset", root)
    for key in ("bad00001", "bad00002", "bad00005"):
        assert f"shard-00099.tar/{key}: " in str(e.value)
    assert "bad00003" not in str(e.value) and not (tmp_path / "subset" / "subset.json").exists()


def test_subset_survives_a_shard_that_breaks_off(micro_config, tmp_path, root, monkeypatch):
    from vlv.data import shards

    monkeypatch.setattr(shards, "_BROKEN", {})  # this test's reports only
    pool = tmp_path / "pool"
    _generate(micro_config, "pool", pool)
    shard = pool / "shard-00001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(tarfile.TarError):
        list(iter_shard(shard, strict=True))
    assert 0 < len(list(iter_shard(shard))) < 32  # (other readers: the samples before the break)
    res = _run_subset({**stage_params(micro_config, "subset"), "top_n": None}, pool, tmp_path / "subset", root)
    assert [b["shard"] for b in res["broken_shards"]] == ["shard-00001.tar"]
    assert 32 < res["counts"]["kept"] < 64


def test_a_stopped_subset_run_resumes_after_its_last_finished_shard(micro_config, tmp_path, root):
    pool = _pool_with_bad_samples(micro_config, tmp_path)
    assert len(list(pool.glob("shard-*.tar"))) >= 2
    cfg = stage_params(micro_config, "subset")
    clip = subset.ClipScorer(str(root / "models/toy/clip"), cfg["clip_prompt"], "cpu")
    ref = subset.select(str(pool), cfg, clip)
    work = tmp_path / "work"
    scored = []

    class Scorer:  # the CLIP scorer, counting what it scores; stops once the first shard is saved
        name, stop = clip.name, True

        def __call__(self, images):
            if self.stop and (work / "state.json").exists():
                raise KeyboardInterrupt("simulated stop in the second shard")
            scored.append(len(images))
            return clip(images)

    scorer = Scorer()
    with pytest.raises(KeyboardInterrupt):
        subset.select(str(pool), cfg, scorer, str(work))
    assert json.loads((work / "state.json").read_text())["shards_done"] == 1
    first, scored[:] = sum(scored), []
    scorer.stop = False
    assert subset.select(str(pool), cfg, scorer, str(work)) == ref  # as one uninterrupted run
    valid = ref["counts"]["kept"] + sum(r["reason"].startswith("below the top") for r in ref["rejected"])
    assert first > 0 and first + sum(scored) == valid  # every image scored once: the rerun skipped shard 1
