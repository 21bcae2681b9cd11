"""Evaluation metrics against independent references, and the coco table."""

import csv
import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import linalg

from vlv.evaluate.evaluate_caption_metrics import clip_scores, coco_metrics
from vlv.evaluate.evaluate_fid import frechet_distance
from vlv.models.clip_features import ClipFeatures
from vlv.shapes.judge import RUBRIC
from vlv.shapes.world import WorldSpec, render_array, sample_scenes
from vlv.stages.tables import coco_rows, spatial_rows, write_table


@pytest.fixture(scope="module")
def clip(root):
    return ClipFeatures(str(root / "models/toy/clip"))


@pytest.fixture(scope="module")
def images(toy_config):
    spec = WorldSpec.from_config(toy_config["shapes"])
    return render_array(sample_scenes(spec, 7, 120), spec)


def test_frechet_distance_is_zero_for_identical_sets_grows_with_noise_and_matches_scipy(clip, images):
    assert abs(frechet_distance(clip, images, images.copy())) < 1e-6
    rng = np.random.default_rng(0)
    noisy = {s: np.clip(images + rng.normal(0, s, images.shape), 0, 255).astype(np.uint8) for s in (10, 40, 80)}
    d = {s: frechet_distance(clip, images, x) for s, x in noisy.items()}
    assert 0 < d[10] < d[40] < d[80]
    a, b = clip.images(images).double().numpy(), clip.images(noisy[40]).double().numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert d[40] == pytest.approx(ref, rel=1e-4)


def test_paper_fid_loads_a_torchscript_inception_and_measures_with_it(images, tmp_path):
    """The paper profile's FID: a TorchScript file with the interface of NVIDIA's Inception-v3 export
    (here a tiny random one) is loaded without torchvision, fed uint8-valued images in batches, and
    its features give the Fréchet distance; a missing file names the download."""
    from vlv.evaluate.evaluate_fid import feature_space
    from vlv.models.inception import INCEPTION_URL
    from vlv.models.paper_sized import TinyInception, build_tiny_inception

    path = build_tiny_inception(tmp_path / "inception.pt", features=6)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    name, feature = feature_space("paper", None, str(path), inception_sha256=digest.upper())
    with pytest.raises(SystemExit, match="not the pinned"):  # a file changed since its download is refused
        feature_space("paper", None, str(path), inception_sha256="0" * 64)
    assert name == "FID" and feature.batch < len(images)  # several batches below
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    shifted = {s: np.clip(images.astype(int) + s, 0, 255).astype(np.uint8) for s in (20, 60)}
    eager = TinyInception(6)
    eager.load_state_dict(torch.jit.load(str(path)).state_dict())
    with torch.no_grad():
        want = eager(x, return_features=True).double()
        b = eager(torch.from_numpy(shifted[60]).permute(0, 3, 1, 2), return_features=True).double().numpy()
    got = feature(x)
    assert got.dtype == torch.float64 and got.shape == (len(images), 6) and torch.allclose(got, want, atol=1e-6)
    assert abs(frechet_distance(feature, images, images.copy())) < 1e-6
    d = {s: frechet_distance(feature, images, x) for s, x in shifted.items()}
    assert 0 < d[20] < d[60]
    a = want.numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert d[60] == pytest.approx(ref, rel=1e-4)
    with pytest.raises(SystemExit, match=re.escape(INCEPTION_URL)):
        feature_space("paper", None, str(tmp_path / "absent.pt"))
    with pytest.raises(SystemExit, match="models.inception"):
        feature_space("paper", None, None)


def test_streamed_distances_equal_the_whole_set_computation(clip, images, tmp_path, monkeypatch):
    """evaluate_fid streams originals and renders in batches (here 16 of 120 images), keeps the real
    statistics across guidances, reads only the first n originals, and names missing renders."""
    from vlv.data.shards import encode_png, write_shard
    from vlv.evaluate import evaluate_fid
    from vlv.evaluate.render_captions import render_key

    monkeypatch.setattr(evaluate_fid, "BATCH", 16)
    keys = [f"{i:04d}" for i in range(len(images))]
    write_shard(tmp_path / "eval" / "shard-00000.tar", ((k, {"png": encode_png(im)}) for k, im in zip(keys, images)))
    rng = np.random.default_rng(1)
    fakes = {g: np.clip(images + rng.normal(0, 20 * g, images.shape), 0, 255).astype(np.uint8) for g in (1.0, 2.0)}
    renders = tmp_path / "renders.tar"
    write_shard(
        renders, ((render_key(k, g), {"png": encode_png(f[i])}) for g, f in fakes.items() for i, k in enumerate(keys))
    )
    n = 100
    got = evaluate_fid.distances_per_guidance(clip, str(tmp_path / "eval"), str(renders), keys[:n], [1.0, 2.0])
    for g, f in fakes.items():
        assert got[f"{g:g}"] == pytest.approx(frechet_distance(clip, images[:n], f[:n]), rel=1e-6)
    assert got["1"] < got["2"]
    write_shard(renders, ((render_key(k, 1.0), {"png": encode_png(fakes[1.0][i])}) for i, k in enumerate(keys[:90])))
    with pytest.raises(SystemExit, match="lacks renders at guidance 1.0 for 10 images"):
        evaluate_fid.distances_per_guidance(clip, str(tmp_path / "eval"), str(renders), keys[:n], [1.0])


def test_clip_scores_in_blocks_and_streamed_features_equal_the_whole_computation(clip, images, tmp_path, monkeypatch):
    from vlv.data.shards import encode_png, write_shard
    from vlv.evaluate import evaluate_caption_metrics as ecm

    caps = [f"a {c} circle" for c in ("red", "blue", "green", "yellow", "purple", "orange", "red", "blue")]
    refs = [[c, "a shape"] if i % 2 else [c] for i, c in enumerate(reversed(caps))]  # 1 or 2 references each
    whole = ecm.clip_scores(clip, images[:8], caps, refs)
    monkeypatch.setattr(ecm, "SIMILARITY_BLOCK", 3)
    assert ecm.clip_scores(clip, images[:8], caps, refs) == pytest.approx(whole, rel=1e-6)
    keys = [f"{i:04d}" for i in range(20)]
    write_shard(tmp_path / "eval" / "shard-00000.tar", ((k, {"png": encode_png(im)}) for k, im in zip(keys, images)))
    monkeypatch.setattr(ecm, "IMAGE_BATCH", 4)
    got_keys, feats, _ = ecm.image_features(clip, str(tmp_path / "eval"), {keys[i] for i in (1, 2, 9, 17)})
    assert got_keys == [keys[i] for i in (1, 2, 9, 17)]
    assert torch.allclose(feats, clip.images(images[[1, 2, 9, 17]]), atol=1e-5)


def test_pycocoevalcap_scores_match_a_hand_computation():
    refs = {"1": ["a red circle at the top left"], "2": ["a blue square in the center"]}
    cands = {"1": "a red circle at the top", "2": "a blue square in the center"}
    m = coco_metrics(refs, cands)
    # BLEU-4 (corpus level): all n-gram precisions are 1; the brevity penalty is exp(1 - 13/12)
    assert m["BLEU-4"] == pytest.approx(math.exp(1 - 13 / 12), abs=1e-6)
    # ROUGE-L (beta 1.2), per caption then averaged: LCS 6 of 6 / 7 words; the second is identical
    p, r, beta2 = 1.0, 6 / 7, 1.2**2
    assert m["ROUGE-L"] == pytest.approx(((1 + beta2) * p * r / (r + beta2 * p) + 1.0) / 2, abs=1e-6)
    assert 0 < m["METEOR"] <= 1 and m["CIDEr"] >= 0
    assert m["SPICE"] is None  # no CoreNLP jars here: not computed, never 0


def test_clipscore_follows_hessel_et_al(clip, images):
    caps = ["a large red circle in the center", "a small blue square at the top left"]
    s = clip_scores(clip, images[:2], caps, [[caps[0], "x"], [caps[1]]])
    img = torch.nn.functional.normalize(clip.images(images[:2]), dim=-1)
    txt = torch.nn.functional.normalize(clip.texts(caps), dim=-1)
    clip_s = 2.5 * (img * txt).sum(-1).clamp(min=0)
    assert s["CLIPScore"] == pytest.approx(float(clip_s.mean()), rel=1e-5)
    # each candidate is one of its references, so its best reference similarity is 1
    assert s["RefCLIPScore"] == pytest.approx(float((2 * clip_s / (clip_s + 1)).mean()), rel=1e-5)


def test_coco_table_names_metric_dataset_and_profile(tmp_path):
    for name, fd in (("vlv_pairs100", 3.0), ("teacher", 1.0)):
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"metric": "FD-toyCLIP", "images": 5, "guidance": {"1": fd, "2": fd / 2}})
        )
        (tmp_path / "m").mkdir(exist_ok=True)
        metrics = {"BLEU-4": 0.5, "METEOR": 0.3, "ROUGE-L": 0.6, "CIDEr": 1.2, "SPICE": None, "CLIPScore": 1.5}
        metrics.update(RefCLIPScore=0.9, implementation="pycocoevalcap")
        (tmp_path / "m" / f"{name}.json").write_text(json.dumps(metrics))
    fids = [str(tmp_path / f"{n}.json") for n in ("vlv_pairs100", "teacher")]
    mets = [str(tmp_path / "m" / f"{n}.json") for n in ("vlv_pairs100", "teacher")]
    rows = coco_rows(fids, mets, "toy", "Shapes evaluation split (5 images)")
    write_table(rows, tmp_path / "coco.csv", fids + mets)
    table = list(csv.DictReader((tmp_path / "coco.csv").open()))
    assert [r["captioner"] for r in table] == ["vlv_pairs100", "teacher"]
    assert table[0]["metric"] == "FD-toyCLIP" and table[0]["FD-toyCLIP cfg2"] == "1.5" and table[0]["profile"] == "toy"
    assert table[0]["SPICE"] == "not computed" and "FID" not in "".join(table[0])
    with pytest.raises(SystemExit, match="no caption metrics"):
        coco_rows(fids, mets[:1], "toy", "x")
    fid = {"metric": "FID", "features": "Inception-v3 pool features (x)", "images": 5, "guidance": {"1": 9.5}}
    (tmp_path / "vlv_pairs100.json").write_text(json.dumps(fid))  # the paper profile names its features
    row = coco_rows(fids[:1], mets[:1], "paper", "COCO")[0]
    assert row["metric"] == "FID on Inception-v3 pool features (x)" and row["FID cfg1"] == 9.5


def test_spatial_table_rows_from_the_reconstruction_scores(tmp_path):
    det = {"colour_shape_recall": 0.4, "cell_accuracy_of_matched": 0.5, "size_accuracy_of_matched": 0.6}
    det.update(mean_center_error_px=3.25, mean_scale_error=0.05, mean_scale_bias=-0.02)
    floor = {**det, "mean_center_error_px": None}
    metrics = {"images": 8, "detector": {"recon cfg2": det, "caption cfg2": det, "empty caption": floor}}
    (tmp_path / "m.json").write_text(json.dumps(metrics))
    rows = spatial_rows(str(tmp_path / "m.json"), "toy", "Shapes")
    assert [(r["source"], r["guidance"]) for r in rows] == [
        ("VLV reconstruction", "2"),
        ("decoder from true caption (bound)", "2"),
        ("decoder from empty caption (floor)", "1"),
    ]
    assert rows[0]["mean centre error (px)"] == 3.25 and rows[2]["mean centre error (px)"] is None
    assert rows[0]["mean scale bias (drawn minus true, share of image side)"] == -0.02
    (tmp_path / "bad.json").write_text(json.dumps({"images": 8}))
    with pytest.raises(SystemExit, match="no detector scores"):
        spatial_rows(str(tmp_path / "bad.json"), "paper", "COCO")


def test_renderer_loader_names_the_pipeline_classes_it_takes(tmp_path):
    from vlv.models.t2i import load_t2i_pipeline

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(
        SystemExit, match="StableDiffusionXLPipeline.*StableDiffusionPipeline, StableDiffusion3Pipeline"
    ):
        load_t2i_pipeline(tmp_path)
    with pytest.raises(SystemExit, match="no model_index.json"):
        load_t2i_pipeline(tmp_path / "..")


def test_judge_rating_is_the_last_level_standing_alone_in_the_reply():
    from vlv.evaluate.evaluate_arena import judge_prompt, parse_rating

    replies = {
        "Rating: 5": 5,
        "Covers both shapes; the layout is right. 4/6": 4,
        "I would give it 3 out of 6.": 3,
        "It mentions 2 objects of 3 ... Final rating: 6": 6,
        "No rating here.": None,
        "5.5": None,
        "Rating: 7": None,
    }
    assert {r: parse_rating(r) for r in replies} == replies
    prompt = judge_prompt("a red circle")
    assert '"a red circle"' in prompt and all(f"{level}: {text}" in prompt for level, text in RUBRIC.items())


def _arena_split(micro_config, tmp_path):
    from vlv.stages import generate_shapes

    ev = tmp_path / "eval"
    assert (
        generate_shapes.main(["--params", json.dumps(micro_config["shapes"]), "--split", "eval", "--out", str(ev)]) == 0
    )
    keys = [json.loads(line)["key"] for line in (ev / "scenes.jsonl").read_text().splitlines()]
    caps = tmp_path / "caps.jsonl"
    colours = ["red", "blue", "green"]
    caps.write_text(
        "".join(json.dumps({"key": k, "caption": f"a {colours[i % 3]} circle"}) + "\n" for i, k in enumerate(keys))
    )
    return ev, caps, keys


def test_api_vlm_judge_rates_a_seeded_sample_and_keeps_replies_without_a_rating(micro_config, tmp_path, monkeypatch):
    from conftest import chat_server

    from vlv.evaluate import evaluate_arena

    ev, caps, keys = _arena_split(micro_config, tmp_path)
    seen = []

    def judge(auth, body):
        text, image = body["messages"][0]["content"]
        seen.append(text["text"])
        assert image["image_url"]["url"].startswith("data:image/png;base64,")
        return "I cannot tell." if "blue" in text["text"] else "Right colour and shape, no layout. 3"

    cfg = json.loads(toy_section("arena"))
    with chat_server(judge) as url:
        cfg.update(judge="api", model="test-judge", n_images=6, api={**cfg["api"], "base_url": url, "key_env": "VLV_T"})
        monkeypatch.setenv("VLV_T", "sk-test")
        args = ["--params", json.dumps(cfg), "--images", str(ev), "--captions", str(caps)]
        assert evaluate_arena.main([*args, "--out", str(tmp_path / "a.json")]) == 0
        assert evaluate_arena.main([*args, "--out", str(tmp_path / "b.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert a == json.loads((tmp_path / "b.json").read_text())  # the same seeded sample, the same ratings
    assert len(a["replies"]) == 6 and set(a["replies"]) <= set(keys) and len(seen) == 12
    blue = {k for k in a["replies"] if "blue" in json.loads(caps.read_text().splitlines()[keys.index(k)])["caption"]}
    assert set(a["unrated"]) == blue and a["captions"] == 6 - len(blue) > 0
    assert a["mean_rating"] == 3.0 and a["distribution"]["3"] == a["captions"]
    assert "test-judge" in a["judge"] and all("0: not informative" in t for t in seen)


def test_local_vlm_judge_runs_a_chat_vlm_on_image_caption_and_rubric(micro_config, root, tmp_path):
    from vlv.evaluate import evaluate_arena
    from vlv.models.paper_sized import build_tiny_llava

    ev, caps, _ = _arena_split(micro_config, tmp_path)
    llava = build_tiny_llava(root / "models/toy/lm", tmp_path / "llava")
    cfg = {**json.loads(toy_section("arena")), "judge": "local", "model": str(llava), "n_images": 2}
    cfg["max_new_tokens"] = 6
    args = [
        "--params",
        json.dumps(cfg),
        "--images",
        str(ev),
        "--captions",
        str(caps),
        "--out",
        str(tmp_path / "a.json"),
    ]
    try:  # random weights: the replies are noise, rated or not
        evaluate_arena.main([*args, "--device", "cpu"])
    except SystemExit as e:
        assert "rated none of the 2 captions" in str(e)
    else:
        a = json.loads((tmp_path / "a.json").read_text())
        assert len(a["replies"]) == 2 and a["captions"] + len(a["unrated"]) == 2


def toy_section(key: str) -> str:
    """A config section of the committed toy config, as the rules pass it."""
    from conftest import ROOT

    from vlv.config import load_config, section, validate_config

    return json.dumps(section(validate_config(load_config(ROOT / "config.yaml")), key))
