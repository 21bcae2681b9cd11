"""Ablation variants (Tables 4, 5, 7) and the composition: names, data shares, tables, the DAG."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import run_snakemake

from vlv.stages.compose import compose_embeddings, token_counts
from vlv.stages.distill_stage1 import training_keys
from vlv.stages.tables import captioner_rows, reconstruction_rows
from vlv.variants import captioner_name, parse_captioner, stage1_overrides


def test_variant_names_parse_to_the_config_values_they_change():
    assert stage1_overrides("encoder") == {}
    assert stage1_overrides("nq16") == {"num_queries": 16}
    assert stage1_overrides("data10") == {"data_percent": 10}
    for bad in ("nq0", "data0", "data101", "queries16"):
        with pytest.raises(ValueError):
            stage1_overrides(bad)
    assert parse_captioner("vlv_pairs100") == {
        "init": "vlv", "percent": 100, "trainable": None, "llm": None, "seed": None,
    }  # fmt: skip
    assert parse_captioner("no_stage1_pairs25-mlp_llm_encoder") == {
        "init": "no_stage1", "percent": 25, "trainable": "mlp_llm_encoder", "llm": None, "seed": None,
    }  # fmt: skip
    assert parse_captioner("vlv_pairs100-mlp-llm_small")["llm"] == "small"
    assert parse_captioner("teacher") is None and parse_captioner("vlv_pairs100-llm_small-mlp") is None
    assert parse_captioner("direct_pairs10") == {
        "init": "direct", "percent": 10, "trainable": None, "llm": None, "seed": None,
    }  # fmt: skip
    assert parse_captioner("vlv_pairs100-seed2")["seed"] == 2 and parse_captioner("direct_pairs100-seed1")["seed"] == 1
    assert stage1_overrides("seed2") == {"seed": 2}
    assert captioner_name("direct", 100, seed=1) == "direct_pairs100-seed1"
    assert parse_captioner("direct_pairs100-mlp") is None  # the direct captioner has its own recipe
    assert captioner_name("vlv", 100, "mlp", "large") == "vlv_pairs100-mlp-llm_large"
    with pytest.raises(ValueError):
        captioner_name("vlv", 100, "everything")


def test_a_stage1_data_share_is_a_seeded_sample_in_subset_order(tmp_path):
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps({"kept": [{"key": f"{i:04d}"} for i in range(200)]}))
    full = training_keys(str(subset))
    assert full == [f"{i:04d}" for i in range(200)] and training_keys(str(subset), 100, seed=3) == full
    tenth = training_keys(str(subset), 10, seed=0)
    assert len(tenth) == 20 and set(tenth) <= set(full) and tenth == sorted(tenth)
    assert tenth == training_keys(str(subset), 10, seed=0) and tenth != training_keys(str(subset), 10, seed=1)


def test_composition_keeps_the_first_k_tokens_of_a_then_b():
    z_a, z_b = torch.zeros(2, 8, 3), torch.ones(2, 8, 3)
    z = compose_embeddings(z_a, z_b, 3)
    assert z.shape == (2, 8, 3)
    assert torch.equal(z[:, :3], z_a[:, :3]) and torch.equal(z[:, 3:], z_b[:, :5])
    assert torch.equal(compose_embeddings(z_a, z_b, 8), z_a) and torch.equal(compose_embeddings(z_a, z_b, 0), z_b)
    with pytest.raises(ValueError, match="0..8"):
        compose_embeddings(z_a, z_b, 9)
    assert token_counts([2, 4, 40], 8) == [0, 2, 4, 8]


def test_ablation_rows_name_the_setting_from_each_artefacts_manifest(tmp_path):
    fids, metrics = [], []
    for name, nq, fd in (("nq16", 16, 5.0), ("encoder", 77, 3.0)):
        (tmp_path / "reconstruct" / name).mkdir(parents=True)
        m = tmp_path / "reconstruct" / name / "metrics.json"
        m.write_text(json.dumps({"detector": {"recon cfg2": {"colour_shape_recall": 0.4}, "empty caption": {}}}))
        (m.parent / "manifest.json").write_text(json.dumps({"config": {"num_queries": nq}}))
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({"metric": "FD-toyCLIP", "guidance": {"2": fd}}))
        fids.append(str(f))
        metrics.append(str(m))
    rows = reconstruction_rows("queries", "num_queries", fids, metrics, "toy", "Shapes")
    assert [r["setting"] for r in rows] == ["num_queries=16", "num_queries=77"]
    assert rows[0]["reconstruction FD-toyCLIP cfg2"] == 5.0 and rows[0]["objects found cfg2"] == 0.4
    (tmp_path / "ft" / "vlv_pairs100-mlp").mkdir(parents=True)
    (tmp_path / "ft" / "vlv_pairs100-mlp" / "manifest.json").write_text(json.dumps({"init": "vlv"}))
    fid = tmp_path / "vlv_pairs100-mlp.json"
    fid.write_text(json.dumps({"metric": "FD-toyCLIP", "guidance": {"1": 2.5}}))
    judge = tmp_path / "judge.json"
    judge.write_text(json.dumps({"vlv_pairs100-mlp": {"coverage": 0.5, "hallucinated_per_caption": 0.25}}))
    row = captioner_rows("x", [str(fid)], [str(tmp_path / "ft" / "vlv_pairs100-mlp")], str(judge), "toy", "S",
                         lambda man: man["init"])[0]  # fmt: skip
    assert row["setting"] == "vlv" and row["caption -> image FD-toyCLIP cfg1"] == 2.5
    assert row["object coverage"] == 0.5 and row["hallucinated per caption"] == 0.25
    with pytest.raises(SystemExit, match="different captioners"):
        captioner_rows("x", [str(fid)], [str(tmp_path / "ft" / "other")], None, "toy", "S", str)


def test_micro_ablations_target_adds_variants_without_retraining_the_main_run(micro_all_copy):
    wd = micro_all_copy
    main_encoder = (wd / "results/distill_stage1/encoder/vlv_encoder.json").stat().st_mtime_ns
    main_captioner = (wd / "results/finetune_stage2/vlv_pairs100/manifest.json").stat().st_mtime_ns
    run_snakemake(wd, "--cores", "2", "ablations")
    assert (wd / "results/distill_stage1/encoder/vlv_encoder.json").stat().st_mtime_ns == main_encoder
    assert (wd / "results/finetune_stage2/vlv_pairs100/manifest.json").stat().st_mtime_ns == main_captioner
    assert json.loads((wd / "results/distill_stage1/nq4/vlv_encoder.json").read_text())["num_queries"] == 4
    half = json.loads((wd / "results/distill_stage1/data50/manifest.json").read_text())
    assert half["training_images"] == 24  # half of the 48 images the micro subset keeps
    rows = list(csv.DictReader((wd / "results/tables/ablations.csv").open()))
    assert [r["setting"] for r in rows[:2]] == ["num_queries=4", "num_queries=8"]
    assert [r["artefact"] for r in rows[2:]] == ["vlv_pairs100-mlp", "vlv_pairs100"]
    assert rows[2]["setting"].startswith("mlp (") and rows[3]["setting"].startswith("mlp_llm (")
    assert all(float(r["object coverage"]) >= 0 for r in rows[2:])
    scaling = list(csv.DictReader((wd / "results/tables/scaling.csv").open()))
    assert [r["setting"] for r in scaling[:2]] == ["data_percent=50", "data_percent=100"]
    assert "lm_small" in scaling[2]["setting"] and scaling[3]["artefact"] == "vlv_pairs100"
    small, base = (json.loads((wd / f"results/finetune_stage2/{n}/manifest.json").read_text())
                   for n in ("vlv_pairs100-llm_small", "vlv_pairs100"))  # fmt: skip
    assert small["llm_parameters"] < base["llm_parameters"]
    compose = json.loads((wd / "results/compose/compose.json").read_text())
    assert compose["pairs"] == 2 and list(compose["by_k"]) == ["0", "4", "8"]
    assert all(0 <= v["objects_of_a_found"] <= 1 for v in compose["by_k"].values())
    assert (wd / "results/tables/ablations.png").exists() and (wd / "results/compose/grid.png").exists()
    no_stage1 = list(csv.DictReader((wd / "results/tables/no_stage1.csv").open()))
    assert [r["artefact"] for r in no_stage1] == ["vlv_pairs100", "no_stage1_pairs100"]


def test_vlv_compose_command_renders_each_k(root, tmp_path, micro_all):
    from PIL import Image

    from vlv.cli import main as vlv_main

    for name, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        arr = np.full((32, 32, 3), 128, np.uint8)
        arr[8:20, 8:20] = colour
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
    rc = vlv_main(["compose", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--encoder",
                   str(micro_all / "results/distill_stage1/encoder"), "--tokens-from-a", "4", "--steps", "2",
                   "--out", str(tmp_path / "out")])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a+b_k0_of8.png",
        "a+b_k4_of8.png",
        "a+b_k8_of8.png",
    ]
