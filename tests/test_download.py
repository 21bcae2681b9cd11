"""The paper profile's data path against a local HTTP server on 127.0.0.1 (never the internet):
resumable downloads, checksums, refused zip entries, and COCO / VQAv2 files made into the shard
layout the stages read."""

import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest
from conftest import file_server
from PIL import Image

from vlv.data.shards import BadImage, decode_image, iter_dir, load_images, square_crop
from vlv.paper_data import download, prepare_coco


def _bytes(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_an_interrupted_download_resumes_from_its_partial_file(tmp_path):
    data = _bytes(300_000)
    with file_server({"/big.bin": data}, cut_first={"/big.bin"}) as (url, seen):
        with pytest.raises(download.DownloadError, match="kept in .*part"):
            download.fetch(url + "/big.bin", tmp_path / "big.bin", retries=0, progress=False)
        part = tmp_path / "big.bin.part"
        assert not (tmp_path / "big.bin").exists() and 0 < part.stat().st_size < len(data)
        have = part.stat().st_size
        record = download.fetch(
            url + "/big.bin", tmp_path / "big.bin", hashlib.sha256(data).hexdigest(), progress=False
        )
    assert (tmp_path / "big.bin").read_bytes() == data and not part.exists()
    assert seen == [("/big.bin", None), ("/big.bin", f"bytes={have}-")]  # the rest only, not the file again
    assert record["resumed_from_bytes"] == have and record["sha256_pinned"]


def test_a_dropped_connection_is_retried_within_one_call(tmp_path):
    data = _bytes(100_000, 1)
    with file_server({"/f": data}, cut_first={"/f"}) as (url, seen):
        record = download.fetch(url + "/f", tmp_path / "f", retries=2, backoff=0, progress=False)
    assert (tmp_path / "f").read_bytes() == data and record["attempts"] == 2
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and not record["sha256_pinned"]
    assert seen[1][1] is not None and seen[1][1].startswith("bytes=")


def test_a_checksum_mismatch_is_rejected_and_nothing_lands_at_the_destination(tmp_path):
    data = _bytes(5_000, 2)
    with file_server({"/f.zip": data}) as (url, _):
        with pytest.raises(download.DownloadError, match="SHA-256 mismatch: expected 00+, got"):
            download.fetch(url + "/f.zip", tmp_path / "f.zip", "0" * 64, progress=False)
    assert not (tmp_path / "f.zip").exists()
    assert (tmp_path / "f.zip.corrupt").read_bytes() == data  # kept aside for inspection


def test_a_dead_url_fails_at_once_with_its_status(tmp_path):
    with file_server({}) as (url, seen):
        with pytest.raises(download.DownloadError, match="HTTP 404"):
            download.fetch(url + "/gone.zip", tmp_path / "gone.zip", retries=5, backoff=10, progress=False)
    assert len(seen) == 1  # a 404 is not retried


def test_the_download_command_writes_the_file_and_its_record(tmp_path):
    data = _bytes(1000, 3)
    with file_server({"/a.zip": data}) as (url, _):
        params = json.dumps({"url": url + "/a.zip", "sha256": hashlib.sha256(data).hexdigest()})
        assert download.main(["--params", params, "--out", str(tmp_path / "a.zip")]) == 0
        bad = json.dumps({"url": url + "/a.zip", "sha256": "1" * 64})
        with pytest.raises(SystemExit, match="download failed: .*SHA-256 mismatch"):
            download.main(["--params", bad, "--out", str(tmp_path / "b.zip")])
    record = json.loads((tmp_path / "a.zip.json").read_text())
    assert record["bytes"] == 1000 and record["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt", "C:/evil.txt"])
def test_a_zip_entry_escaping_the_target_folder_is_refused_before_anything_is_written(tmp_path, name):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "fine")
        zf.writestr(zipfile.ZipInfo(name), "evil")
    dest = tmp_path / "sub" / "dest"
    with pytest.raises(download.UnsafeArchive, match="would escape the target folder"):
        download.safe_extract(archive, dest)
    assert not dest.exists() and not list(tmp_path.rglob("evil.txt"))


def test_a_symlink_entry_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    info = zipfile.ZipInfo("link")
    info.external_attr = 0o120777 << 16  # a symbolic link entry
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(download.UnsafeArchive, match="symbolic link"):
        download.safe_extract(archive, tmp_path / "d")
    assert [p.name for p in download.safe_extract(_zip(tmp_path / "ok.zip", {"x/y.txt": b"1"}), tmp_path / "d")] == [
        "y.txt"
    ]


def _zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _jpeg(w, h, colour):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _tiny_coco(tmp_path):
    """Six annotated val images (one missing from the image zip), two captions each, and VQAv2 files."""
    ids = [42, 7, 1000, 13, 99, 5]
    sizes = {i: (40 + i % 7, 30 + i % 5) for i in ids}
    images = {f"val2014/COCO_val2014_{i:012d}.jpg": _jpeg(*sizes[i], (i % 255, 10, 20)) for i in ids if i != 99}
    captions = {
        "images": [
            {"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "width": sizes[i][0], "height": sizes[i][1]}
            for i in ids
        ],
        "annotations": [
            {"id": 10 * i + j, "image_id": i, "caption": f" image {i} caption {j} "} for i in ids for j in range(2)
        ],
    }
    questions = {
        "questions": [
            {"question_id": 100 * i + k, "image_id": i, "question": f"q{k} of {i}?"} for i in ids for k in range(2)
        ]
    }
    answers = {
        "annotations": [
            {
                "question_id": 100 * i + k,
                "image_id": i,
                "answer_type": "number" if k else "other",
                "answers": [{"answer": str(i + k), "answer_id": n} for n in range(10)],
            }
            for i in ids
            for k in range(2)
            if (i, k) != (7, 1)  # one question without annotations
        ]
    }
    return {
        "/zips/val2014.zip": _zip(tmp_path / "s1.zip", images).read_bytes(),
        "/annotations/annotations_trainval2014.zip": _zip(
            tmp_path / "s2.zip",
            {"annotations/captions_val2014.json": json.dumps(captions), "annotations/instances_val2014.json": "{}"},
        ).read_bytes(),
        "/vqa/v2_Questions_Val_mscoco.zip": _zip(
            tmp_path / "s3.zip", {"v2_OpenEnded_mscoco_val2014_questions.json": json.dumps(questions)}
        ).read_bytes(),
        "/vqa/v2_Annotations_Val_mscoco.zip": _zip(
            tmp_path / "s4.zip", {"v2_mscoco_val2014_annotations.json": json.dumps(answers)}
        ).read_bytes(),
    }, sizes


def test_coco_val_and_vqav2_become_the_evaluation_split_and_its_questions(tmp_path):
    files, sizes = _tiny_coco(tmp_path)
    dl = tmp_path / "download"
    with file_server(files) as (url, _):
        for path in files:
            download.fetch(url + path, dl / os.path.basename(path), progress=False)
    out = tmp_path / "eval"
    cfg = {"n_images": 5, "seed": 3, "shard_size": 2, "max_bad_share": 0.2}  # image 99 is missing from the zip
    args = ["eval", "--params", json.dumps(cfg), "--images", str(dl / "val2014.zip")]
    args += ["--annotations", str(dl / "annotations_trainval2014.zip"), "--out", str(out)]
    assert prepare_coco.main(args) == 0
    expected = prepare_coco.sample_ids(list(sizes), 5, 3)
    assert len(expected) == 5 and expected != sorted(sizes)[:5]  # seeded sample, not the first five
    assert 99 in expected  # (the seed draws it) so one of five is bad: more than a 10 % limit allows
    with pytest.raises(SystemExit, match=r"prepare_coco: 1 of 5 samples are bad .*000000000099: 'COCO_val2014_0+99"):
        prepare_coco.main(
            ["eval", "--params", json.dumps({**cfg, "max_bad_share": 0.1}), *args[3:-1], str(tmp_path / "x")]
        )
    manifest = json.loads((out / "manifest.json").read_text())
    kept = [i for i in expected if i != 99]
    assert manifest["images"] == len(kept) and "000000000099" in manifest["skipped"]
    samples = list(iter_dir(out))
    assert [k for k, _ in samples] == [f"{i:012d}" for i in kept]
    assert len(list(out.glob("shard-*.tar"))) == (len(expected) + 1) // 2
    for key, parts in samples:
        i, meta = int(key), json.loads(parts["json"])
        assert meta["captions"] == [f"image {i} caption 0", f"image {i} caption 1"]
        assert decode_image(parts["jpg"]).size == sizes[i]  # the original JPEG, not resized
    coco = json.loads((out / "captions_coco.json").read_text())
    assert sorted(im["id"] for im in coco["images"]) == kept and len(coco["annotations"]) == 2 * len(kept)
    # the same inputs give the same bytes (a seeded, recorded list)
    again = tmp_path / "again"
    assert prepare_coco.main(args[:-1] + [str(again)]) == 0
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in again.glob("shard-*.tar"))

    vqa = tmp_path / "vqav2.jsonl"
    args = ["vqa", "--split", str(out), "--questions", str(dl / "v2_Questions_Val_mscoco.zip")]
    args += ["--annotations", str(dl / "v2_Annotations_Val_mscoco.zip"), "--out", str(vqa)]
    assert prepare_coco.main(args) == 0
    rows = [json.loads(line) for line in vqa.read_text().splitlines()]
    want = {(f"{i:012d}", str(100 * i + k)) for i in kept for k in range(2) if (i, k) != (7, 1)}
    assert {(r["key"], r["qid"]) for r in rows} == want
    i = next(i for i in kept if i != 7)
    r = next(r for r in rows if r["qid"] == str(100 * i + 1))
    assert r["answers"] == [str(i + 1)] * 10 and r["kind"] == "number"

    # the paper profile's one size: the centred square, resized, stored as PNG; the stages load it
    with pytest.raises(BadImage, match="different sizes"):
        load_images(out)  # the originals differ in size
    sized = tmp_path / "sized"
    params = json.dumps({**cfg, "image_size": 24})
    args = ["eval", "--params", params, "--images", str(dl / "val2014.zip")]
    assert (
        prepare_coco.main([*args, "--annotations", str(dl / "annotations_trainval2014.zip"), "--out", str(sized)]) == 0
    )
    keys, images, metas = load_images(sized)
    assert keys == [f"{i:012d}" for i in kept] and images.shape == (len(kept), 24, 24, 3)
    assert all(m["image_size"] == 24 and (m["width"], m["height"]) == sizes[int(k)] for k, m in zip(keys, metas))
    assert np.abs(images[0].astype(int) - [kept[0] % 255, 10, 20]).max() <= 3  # the image's own colour


def test_square_crop_keeps_the_centre():
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 0, 0), (10, 0, 20, 10))  # the centre 10x10 is red
    out = np.asarray(square_crop(img, 5))
    assert out.shape == (5, 5, 3) and (out[..., 0] > 240).all() and (out[..., 1] < 15).all()
