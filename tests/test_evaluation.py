"""Evaluation metrics against independent references, and the coco table."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy import linalg

from vlv.evaluate_caption_metrics import clip_scores, coco_metrics
from vlv.evaluate_fid import frechet_distance
from vlv.models.clip_features import ClipFeatures
from vlv.shapes.world import WorldSpec, render_array, sample_scenes
from vlv.tables import coco_rows, spatial_rows, write_table


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


def test_spatial_table_rows_from_the_reconstruction_scores(tmp_path):
    det = {"colour_shape_recall": 0.4, "cell_accuracy_of_matched": 0.5, "size_accuracy_of_matched": 0.6}
    det.update(mean_center_error_px=3.25, mean_scale_error=0.05)
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
