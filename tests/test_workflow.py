import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_snakemake, workflow_dir

pytestmark = pytest.mark.workflow


def test_dry_run_of_all_lists_the_stages(tmp_path):
    res = run_snakemake(workflow_dir(tmp_path), "-n", "--cores", "1", "all")
    out = res.stdout + res.stderr
    for rule in ("generate_shapes", "subset", "distill_stage1", "synthesize_captions", "finetune_stage2", "caption"):
        assert rule in out
    assert "pretrain_toy_t2i" not in out  # `all` starts from the committed stand-ins


def test_nested_command_line_values_reach_the_stage_typed(tmp_path):
    # Snakemake hands nested --config values over as text; they arrive as the schema's types
    res = run_snakemake(
        workflow_dir(tmp_path),
        "-n",
        "-p",
        "--cores",
        "1",
        "results/distill_stage1/encoder",
        "--config",
        "stage1={steps: 7, lr: 2e-4}",
    )
    assert '"steps": 7,' in res.stdout and '"lr": 0.0002,' in res.stdout


def test_dry_run_of_pretrain_toy(tmp_path):
    res = run_snakemake(workflow_dir(tmp_path), "-n", "--cores", "1", "pretrain_toy")
    out = res.stdout + res.stderr
    for rule in (
        "pretrain_toy_t2i",
        "pretrain_toy_clip",
        "pretrain_toy_lm",
        "pretrain_toy_vision",
        "benchmark_toy_standins",
    ):
        assert rule in out


def test_dry_run_of_the_paper_profile_writes_under_its_own_root(tmp_path):
    res = run_snakemake(
        workflow_dir(tmp_path),
        "-n",
        "-p",
        "--cores",
        "1",
        "all",
        configfiles=(ROOT / "config.yaml", ROOT / "config" / "paper.yaml"),
    )
    out = res.stdout + res.stderr
    assert "results/paper/subset/subset.json" in out
    assert "results/subset/subset.json" not in out
    # real data in: COCO 2014 val and VQAv2 fetched and made into shards, LAION through img2dataset,
    # stage 2's pairs drawn from the subset; no Shapes split
    for rule in ("download", "prepare_coco", "prepare_vqa", "laion_metadata", "download_laion", "laion_pairs"):
        assert f"rule {rule}:" in out
    assert "data/download/val2014.zip" in out and "rule generate_shapes:" not in out
    assert "--images results/paper/prepare_coco/eval" in out and "results/paper/tables/vqa.csv" in out
    # training through accelerate with the committed config
    launch = "accelerate launch --config_file config/accelerate/ddp.yaml --num_processes 8 -m vlv.stages."
    assert launch + "distill_stage1" in out and launch + "finetune_stage2" in out
    # the paper profile captions with the open VLMs of Table 1 and has no Shapes judge
    for name in (
        "florence2_large",
        "qwen25vl_7b",
        "llava15_7b",
        "vlv_pairs100",
        "no_stage1_pairs100",
        "direct_pairs100",
    ):
        assert f"results/paper/caption/{name}.jsonl" in out
    assert "rule evaluate_captions_shapes:" not in out and "evaluate/captions_shapes_" not in out


def test_bad_config_stops_before_any_job_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("subset:\n  top_m: 3\n")
    (tmp_path / "w").mkdir()
    res = run_snakemake(
        workflow_dir(tmp_path / "w"), "-n", "--cores", "1", "all", configfiles=(ROOT / "config.yaml", bad), check=False
    )
    assert res.returncode != 0
    assert "unknown config key 'subset.top_m'" in res.stdout + res.stderr


def test_micro_all_end_to_end_then_nothing_to_do(micro_all_copy):
    wd = micro_all_copy
    res = json.loads((wd / "results/subset/subset.json").read_text())
    assert res["counts"]["kept"] == 48
    metrics = json.loads((wd / "results/reconstruct/encoder/metrics.json").read_text())
    assert metrics["images"] == 8 and set(metrics["detector"]) == {"recon cfg2", "caption cfg2", "empty caption"}
    assert (wd / "results/distill_stage1/encoder/vlv_encoder.json").exists()
    scores = json.loads((wd / "results/evaluate/captions_shapes_main.json").read_text())
    assert set(scores) == {"reference", "teacher", "vlv_pairs100", "no_stage1_pairs100", "direct_pairs100"}
    assert scores["teacher"]["coverage"] == 1.0 and scores["teacher"]["exact"] == 1.0  # the oracle is exact
    assert scores["vlv_pairs100"]["captions"] == 16
    table = list(csv.DictReader((wd / "results/tables/coco.csv").open()))
    assert [r["captioner"] for r in table] == [
        "reference",
        "teacher",
        "vlv_pairs100",
        "no_stage1_pairs100",
        "direct_pairs100",
    ]
    assert {r["metric"] for r in table} == {"FD-toyCLIP"} and all(float(r["FD-toyCLIP cfg2"]) >= 0 for r in table)
    assert (wd / "results/tables/coco.manifest.json").exists()
    arena = {
        r["captioner"]: float(r["mean rating (0-6)"]) for r in csv.DictReader((wd / "results/tables/arena.csv").open())
    }
    assert arena["teacher"] == 6.0 and arena["reference"] < 6.0  # the oracle is exact; short references omit relations
    vqa = {r["captioner"]: r for r in csv.DictReader((wd / "results/tables/vqa.csv").open())}
    assert set(vqa) == set(arena) and {r["shots"] for r in vqa.values()} == {"0"}
    assert float(vqa["teacher"]["accuracy"]) == 1.0  # every question's answer is in the oracle's caption
    assert float(vqa["no_stage1_pairs100"]["accuracy"]) < 1.0
    spatial = list(csv.DictReader((wd / "results/tables/spatial.csv").open()))
    assert {r["source"] for r in spatial} >= {"VLV reconstruction", "decoder from empty caption (floor)"}
    for split in ("pool", "pairs", "eval"):
        assert (wd / "results/generate_shapes" / split / "manifest.json").exists()
        assert (wd / "benchmarks/generate_shapes" / f"{split}.tsv").exists()
    again = run_snakemake(wd, "-n", "--cores", "1", "all")
    assert "Nothing to be done" in again.stdout + again.stderr
    run_snakemake(wd, "--report", str(wd / "report.html"))  # tables, figures and training curves in one page
    html = (wd / "report.html").read_text(errors="replace")
    assert all(f"{t}.csv" in html for t in ("coco", "arena", "vqa", "spatial")) and "loss.png" in html
    # the direct captioner: its own recipe, steps chosen on its held-out pairs
    direct = json.loads((wd / "results/finetune_stage2/direct_pairs100/manifest.json").read_text())
    assert direct["init"] == "direct" and direct["config"]["trainable"] == "all_but_vision"
    assert direct["pairs"] == 24 and direct["validation"]["pairs"] == 8
    # the data-efficiency target reuses the whole-pair-set captioners and adds the quarter-set ones
    whole = [wd / f"results/finetune_stage2/{n}_pairs100/manifest.json" for n in ("vlv", "direct")]
    before = [m.stat().st_mtime_ns for m in whole]
    run_snakemake(wd, "--cores", "2", "data_efficiency")
    assert [m.stat().st_mtime_ns for m in whole] == before  # not retrained
    scores = json.loads((wd / "results/evaluate/captions_shapes_data_efficiency.json").read_text())
    assert set(scores) == {"vlv_pairs100", "direct_pairs100", "vlv_pairs25", "direct_pairs25"}
    quarter = json.loads((wd / "results/finetune_stage2/vlv_pairs25/manifest.json").read_text())
    assert quarter["pairs"] == 8 and quarter["init"] == "vlv"
    direct_quarter = json.loads((wd / "results/finetune_stage2/direct_pairs25/manifest.json").read_text())
    assert direct_quarter["pairs"] + direct_quarter["validation"]["pairs"] == 8


def test_seeds_target_reruns_stage1_and_stage2_with_each_seed(micro_all_copy, micro_config):
    wd = micro_all_copy
    main = wd / "results/finetune_stage2/vlv_pairs100/manifest.json"
    before = main.stat().st_mtime_ns
    run_snakemake(wd, "--cores", "2", "seeds")
    assert main.stat().st_mtime_ns == before  # the main run is seed 0's, not retrained
    runs = micro_config["seeds"]["runs"]
    rows = {r["measure"]: r for r in csv.DictReader((wd / "results/tables/seeds.csv").open())}
    assert {"VLV object coverage", "direct object coverage", "VLV arena rating (0-6)", "direct VQA accuracy (0-shot)",
            "VLV caption -> image FD-toyCLIP cfg2", "reconstruction colour+shape (cfg2)",
            "reconstruction size right of found (cfg2)"} <= set(rows)  # fmt: skip
    assert any(m.startswith("reconstruction shape right of drawn colours, ") for m in rows)  # the most objects
    for r in rows.values():
        xs = [float(r[f"seed {s}"]) for s in runs]
        assert int(r["seeds"]) == len(runs) and float(r["mean"]) == pytest.approx(sum(xs) / len(xs), abs=1e-4)
        assert float(r["sd"]) == pytest.approx(float(np.std(xs, ddof=1)), abs=1e-4)
    # the seeds come from the runs' manifests: each stage-1 encoder and captioner has its own
    encoders = ["encoder", *(f"seed{s}" for s in runs if s != 0)]
    assert [
        json.loads((wd / f"results/distill_stage1/{e}/manifest.json").read_text())["seed"] for e in encoders
    ] == runs
    vlv = json.loads((wd / "results/finetune_stage2/vlv_pairs100-seed1/manifest.json").read_text())
    assert vlv["seed"] == 1 and vlv["encoder"].endswith("distill_stage1/seed1")
    weights = [(wd / f"results/distill_stage1/{e}/vlv_head.safetensors").read_bytes() for e in encoders]
    assert len(set(weights)) == len(runs)  # different seeds, different encoders


def test_editing_a_module_a_stage_imports_plans_that_stage_again(micro_all_copy):
    """A rule's code inputs follow its module's imports: an edit to vlv/training.py (imported by both
    training stages, listed by no rule by hand) plans stage 1 and stage 2 again, and not the Shapes
    generator, which does not import it. (An edit, not a touch: Snakemake does not rerun for a newer
    file whose content it has recorded unchanged.)"""
    wd = micro_all_copy  # a copy of the repository: its own vlv/, so the edit leaves this one alone
    assert not (wd / "vlv").is_symlink()
    before = run_snakemake(wd, "-n", "--cores", "1", "all")
    assert "Nothing to be done" in before.stdout + before.stderr
    training = wd / "vlv" / "training.py"
    training.write_text(training.read_text() + "# an edit\n")
    res = run_snakemake(wd, "-n", "--cores", "1", "all")
    planned = set(re.findall(r"^(?:local)?rule (\w+):", res.stdout + res.stderr, flags=re.M))
    assert {"distill_stage1", "finetune_stage2"} <= planned, planned
    assert "generate_shapes" not in planned


@pytest.mark.slow
def test_micro_pretrain_toy_end_to_end(tmp_path):
    wd = workflow_dir(tmp_path)
    run_snakemake(wd, "--cores", "2", "pretrain_toy")
    for name in ("t2i", "renderer", "clip", "lm", "vision"):
        folder = wd / "results/pretrain_toy" / name
        assert (folder / "manifest.json").exists() and (folder / "loss.csv").exists(), name
    report = json.loads((wd / "results/pretrain_toy/benchmark.json").read_text())
    assert set(report["t2i"]) == {"results/pretrain_toy/t2i", "results/pretrain_toy/renderer"}
    assert 0.0 <= report["clip"]["results/pretrain_toy/clip"]["top1_image_to_caption"] <= 1.0
    assert (wd / "results/pretrain_toy/samples.png").stat().st_size > 0
    shutil.rmtree(wd / "results")


@pytest.mark.slow
def test_snakemake_killed_with_sigkill_mid_training_then_rerun_ends_as_the_uninterrupted_run(micro_all_copy):
    """The whole job as a user runs it: `snakemake` training stage 1 (micro) is sent SIGKILL, with
    its job, once the first checkpoint is on disk; `snakemake --unlock` and a rerun with
    `--rerun-incomplete` (as both profiles set) resume from that checkpoint, and the encoder equals
    the one micro_all's uninterrupted run trained, tensor for tensor."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    wd = micro_all_copy
    encoder = wd / "results/distill_stage1/encoder"
    reference = load_file(str(encoder / "florence2/model.safetensors")) | load_file(
        str(encoder / "vlv_head.safetensors")
    )
    shutil.rmtree(encoder)
    work = wd / "work/toy/distill_stage1/encoder"
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    cmd = [shutil.which("snakemake", path=env["PATH"]), "-s", str(ROOT / "Snakefile"), "--directory", str(wd),
           "--configfile", str(ROOT / "config.yaml"), str(ROOT / "tests/config.micro.yaml"), "--cores", "2",
           "results/distill_stage1/encoder"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while proc.poll() is None and not list(work.glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.001)
    assert proc.poll() is None, "the job ended before its first checkpoint could be caught"
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its job, with no chance to clean up
    proc.wait()
    assert not encoder.exists() or not (encoder / "manifest.json").exists()
    run_snakemake(wd, "--unlock")
    run_snakemake(wd, "--cores", "2", "--rerun-incomplete", "results/distill_stage1/encoder")
    assert json.loads((encoder / "manifest.json").read_text())["resumed_from_step"] > 0
    trained = load_file(str(encoder / "florence2/model.safetensors")) | load_file(str(encoder / "vlv_head.safetensors"))
    assert trained.keys() == reference.keys() and all(torch.equal(trained[k], reference[k]) for k in reference)
