"""The DVC layer and the Snakefile agree: every table has a stage, every stage target is a Snakemake output."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TABLE_FILES, dvc, dvc_repro, run_snakemake, workflow_dir

TABLES = ("coco", "arena", "vqa", "no_stage1", "spatial")


@pytest.fixture(scope="module")
def stages():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _targets(stage: dict) -> list[str]:
    cmd = shlex.split(stage["cmd"])
    assert cmd[:3] == ["snakemake", "--cores", "2"], stage["cmd"]
    return cmd[3:]


def _declared(stage: dict) -> list[str]:
    out = []
    for kind in ("outs", "metrics"):
        for item in stage.get(kind, []):
            out.append(next(iter(item)) if isinstance(item, dict) else item)
    return out


def test_every_table_of_all_has_a_stage_with_metrics(stages):
    for table in TABLES:
        owners = [name for name, s in stages.items() if f"results/tables/{table}.csv" in _targets(s)]
        assert owners == [f"table_{table}"], table
        s = stages[f"table_{table}"]
        assert f"results/tables/{table}.csv" in _declared(s)
        assert f"results/tables/{table}.json" in s["metrics"]


def test_stage_targets_are_declared_outputs_and_code_is_a_dependency(stages):
    for name, s in stages.items():
        declared = _declared(s)
        for target in _targets(s):
            assert any(target == d or target.startswith(d.rstrip("/") + "/") for d in declared), (name, target)
        assert {"Snakefile", "rules", "vlv", "models/toy"} <= set(s["deps"]), name


def test_stage_params_name_existing_config_keys(stages, toy_config):
    for name, s in stages.items():
        for entry in s.get("params", []):
            for path in entry["config.yaml"]:
                node = toy_config
                for part in path.split("."):
                    assert part in node, (name, path)
                    node = node[part]


def test_stage_targets_are_snakemake_targets(stages, tmp_path):
    targets = [t for s in stages.values() for t in _targets(s)]
    res = run_snakemake(workflow_dir(tmp_path), "-n", "--cores", "1", *targets, configfiles=(ROOT / "config.yaml",))
    assert "table_coco" in res.stdout + res.stderr


def test_dvc_reads_the_pipeline():
    dvc = Path(sys.executable).parent / "dvc"
    res = subprocess.run([str(dvc), "stage", "list"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    listed = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    assert listed == [
        "data",
        "stage1",
        "stage2",
        "table_coco",
        "table_arena",
        "table_vqa",
        "table_no_stage1",
        "table_spatial",
    ]


def test_pull_dates_outputs_in_pipeline_order(stages, tmp_path):
    from vlv.dvc_pull import set_times_in_order, tracked_outputs

    order = tracked_outputs(ROOT / "dvc.yaml")
    index = {p: i for i, p in enumerate(order)}
    for name, s in stages.items():  # what a stage reads was dated before what it writes
        mine = [index[p] for p in _declared(s)]
        for dep in s["deps"]:
            if dep in index and dep not in _declared(s):
                assert index[dep] < min(mine), (name, dep)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    (tmp_path / "b.json").write_text("{}")
    assert set_times_in_order(tmp_path, ["a", "missing", "b.json"], start=1_000_000.0) == 3
    t = {p: (tmp_path / p).stat().st_mtime for p in ("a", "a/x.txt", "b.json")}
    assert t["a"] == t["a/x.txt"] == 1_000_000.0 and t["b.json"] == 1_000_002.0


@pytest.mark.slow
def test_dvc_repro_over_the_micro_run_then_nothing_then_only_evaluation(micro_all, micro_all_copy):
    """`dvc repro` in a copy of the micro `all` run (a repository without dvc.lock) runs every stage;
    inside them Snakemake finds every persisted target made and remakes only what DVC removes before
    a stage (its outs not marked persist: the tables), byte for byte as `snakemake all` made them.
    `dvc plots show` renders; a second run does nothing; an evaluation-only change reruns only the
    table stages that read it, and inside them Snakemake reruns only evaluation jobs. (The micro run
    is built once, by Snakemake, for this test and the Snakemake tests alike.)"""
    wd = micro_all_copy
    first = dvc_repro(wd)
    assert all(f"Running stage '{s}'" in first for s in ("data", "stage1", "stage2", "table_coco"))
    inside = set(re.findall(r"^localrule (\w+):", first, flags=re.M))
    assert inside <= {f"table_{t}" for t in TABLES} | {"evaluate_captions_shapes"}, inside
    differ = [f for f in TABLE_FILES if (wd / f).read_bytes() != (micro_all / f).read_bytes()]
    assert differ == [] and (wd / "dvc.lock").exists(), differ
    dvc(wd, "plots", "show", "-o", "plots")  # fails the test if it fails
    html = (wd / "plots" / "index.html").read_text()
    assert "training_loss" in html and "distance_vs_guidance" in html
    second = dvc_repro(wd)
    assert "Running stage" not in second and "up to date" in second
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["evaluation"]["renderer_steps"] = 3
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    third = dvc_repro(wd)
    ran = {line.split("'")[1] for line in third.splitlines() if line.startswith("Running stage")}
    assert ran == {"table_coco", "table_no_stage1"}, third[-2000:]  # the two tables that read the distances
    assert "localrule render_captions" in third and "localrule distill_stage1" not in third
    assert "localrule finetune_stage2" not in third
