"""The paper profile at scale, on this CPU: two-process stage 2 through the committed accelerate
config, gradient accumulation, the preflight (`vlv doctor`) and the workflow stopping on it,
img2dataset's pool with its dead URLs recorded, stage 2's pairs drawn from the subset, the cost
report, the Snakemake profiles, and paper-tiny: the paper profile's rules end to end."""

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, accelerate_launch, file_server, run_snakemake, workflow_dir
from PIL import Image
from safetensors.torch import load_file
from test_stage2 import _captioner_weights, _pairs, _stage2_args

from vlv import doctor
from vlv.config import load_config, validate_config
from vlv.data.shards import decode_image, iter_dir, iter_shard, load_images
from vlv.paper_data import prepare_laion
from vlv.stages import finetune_stage2, generate_shapes


@pytest.mark.slow
@pytest.mark.parametrize(("config", "distributed"), [("fsdp", "FSDP"), ("ddp", "MULTI_CPU")])
def test_two_process_stage2_stopped_and_resumed_matches_one_process(config, distributed, micro_config, root, tmp_path):
    """Through each committed accelerate config, 2 processes over gloo: FSDP (torch's fully_shard;
    accelerate's GPU-only gate lifted by tests/launch_on_cpu.py) shards the LM's decoder layers, DDP
    replicates. Stopped after a checkpoint (gathered whole under FSDP) and resumed from it; the folder
    it saves holds what one process trains. The paper profile's stage-2 setting: encoder, psi and LM
    trained, gradient checkpointing (fp32 here)."""
    pairs, caps = _pairs(micro_config, tmp_path)
    over = {"steps": 3, "batch_size": 8, "checkpoint_every": 1, "log_every": 1}
    over |= {"trainable": "mlp_llm_encoder", "gradient_checkpointing": True}
    assert (
        finetune_stage2.main(_stage2_args(micro_config, root, pairs, caps, tmp_path / "one", tmp_path / "w1", **over))
        == 0
    )
    args = _stage2_args(micro_config, root, pairs, caps, tmp_path / "two", tmp_path / "w2", **over)
    stopped = accelerate_launch(
        "vlv.stages.finetune_stage2", args, config=config, env_extra={"VLV_TEST_STOP_AT_STEP": "2"}
    )
    assert stopped.returncode != 0 and "stopped at step 2" in stopped.stderr, stopped.stderr[-3000:]
    assert [p.name for p in (tmp_path / "w2").glob("step-*.pt")] == ["step-00000001.pt"]
    res = accelerate_launch("vlv.stages.finetune_stage2", args, config=config)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((tmp_path / "two/manifest.json").read_text())
    assert (manifest["processes"], manifest["distributed_type"], manifest["resumed_from_step"]) == (2, distributed, 1)
    one, two = _captioner_weights(tmp_path / "one"), _captioner_weights(tmp_path / "two")
    assert one.keys() == two.keys()
    for prefix, folder in (("llm.", "models/toy/lm"), ("enc.", "models/toy/vision")):  # both trained
        init = {f"{prefix}{k}": v for k, v in load_file(str(root / folder / "model.safetensors")).items()}
        init = {k: v for k, v in init.items() if k in one and not torch.equal(v, one[k])}
        # the updates agree to float rounding: each process divides its token-loss sum by its share of
        # the global batch's tokens (a per-process token mean gave 21 % here: Adam's first steps flip
        # the sign of small gradient entries that differ by a few percent)
        rel, size = _relative_update_difference(one, two, init)
        assert size > 1e-3 and rel < 1e-4, (prefix, rel)


def _paper_config(tmp_path, **models):
    cfg = load_config(ROOT / "config.yaml", ROOT / "config" / "paper.yaml")
    cfg["models"].update(models)
    return validate_config(cfg)


def _fake_hub_model(cache: Path, repo: str, payload: bytes) -> None:
    """A model as the Hugging Face cache stores it (refs/main -> snapshots/<rev>/...)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    snap = folder / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(payload)


def test_doctor_lists_present_missing_and_rule_made_items_with_fetch_commands(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    _fake_hub_model(cache, "Qwen/Qwen2.5-3B", b"x" * 5000)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/toy").mkdir(parents=True)
    shutil.copytree(ROOT / "models/toy/clip", tmp_path / "models/toy/clip")
    (tmp_path / "data/download").mkdir(parents=True)
    (tmp_path / "data/download/val2014.zip").write_bytes(b"z" * 1234)
    cfg = _paper_config(tmp_path, clip="models/toy/clip")
    items = {i.name: i for i in doctor.check(cfg)}
    assert items["Qwen/Qwen2.5-3B"].status == "present" and items["Qwen/Qwen2.5-3B"].size >= 5000
    assert items["models/toy/clip"].status == "present"
    assert items["stabilityai/stable-diffusion-2-1-base"].status == "missing"
    assert items["stabilityai/stable-diffusion-2-1-base"].fetch == "hf download stabilityai/stable-diffusion-2-1-base"
    assert items["val2014.zip"].status == "present" and items["val2014.zip"].size == 1234
    assert items["annotations_trainval2014.zip"].status == "by-rule"  # the download rule fetches it
    assert items["LAION metadata"].status == "missing"
    assert items["img2dataset"].status in ("missing", "present")
    assert doctor.check(cfg, use_conda=True)[-1].status in ("by-rule", "present")  # the conda env provides it

    # everything there -> exit 0; the one remaining blocker -> exit 1 and its fetch command printed
    (tmp_path / "data/laion/metadata").mkdir(parents=True)
    pd.DataFrame({"URL": ["http://x/a.jpg"]}).to_parquet(tmp_path / "data/laion/metadata/part-0.parquet")
    fake = tmp_path / "img2dataset"
    fake.write_text("#!/bin/sh\n")
    site = tmp_path / "site.yaml"
    hub_models = [m for m, _ in doctor.models_needed(cfg) if not m.startswith("models/")]
    for m in hub_models:
        if m != "Qwen/Qwen2.5-3B":
            _fake_hub_model(cache, m, b"w")
    site.write_text(f"models:\n  clip: models/toy/clip\ndata:\n  laion:\n    img2dataset: {fake}\n")
    files = [str(ROOT / "config.yaml"), str(ROOT / "config/paper.yaml"), str(site)]
    assert doctor.main(["--configfile", *files]) == 0
    assert "nothing missing" in capsys.readouterr().out
    shutil.rmtree(cache / "models--Qwen--Qwen2.5-VL-7B-Instruct")
    assert doctor.main(["--configfile", *files]) == 1
    out = capsys.readouterr().out
    assert "1 missing" in out and "  hf download Qwen/Qwen2.5-VL-7B-Instruct" in out


@pytest.mark.workflow
def test_a_paper_run_stops_at_the_preflight_before_any_job(tmp_path):
    (tmp_path / "w").mkdir()
    wd = workflow_dir(tmp_path / "w")
    res = run_snakemake(
        wd, "--cores", "1", "data/download/val2014.zip",
        configfiles=(ROOT / "config.yaml", ROOT / "config" / "paper.yaml"),
        check=False, env={"HF_HUB_CACHE": str(tmp_path / "empty_cache"), "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "preflight failed; nothing was run" in out
    assert "hf download Qwen/Qwen2.5-3B" in out and "LAION metadata" in out
    assert not (wd / "data").exists()  # the download job never started


def _jpeg(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def img2dataset_exe():
    """img2dataset from its own venv (requirements-img2dataset.txt; `.ci/run` installs it)."""
    for exe in (ROOT / ".venv-img2dataset/bin/img2dataset", shutil.which("img2dataset")):
        if exe and Path(exe).is_file():
            return str(exe)
    pytest.skip(
        "img2dataset is not installed (python3 -m venv .venv-img2dataset && .venv-img2dataset/bin/pip install -r requirements-img2dataset.txt)"
    )


def test_laion_pool_through_img2dataset_filters_records_dead_urls_and_reads_as_shards(tmp_path, img2dataset_exe):
    files = {f"/img/{i}.jpg": _jpeg(600 + i, 560) for i in range(4)}
    files["/img/small.jpg"] = _jpeg(100, 100)  # metadata says 600x560: caught after the download
    files["/img/broken.jpg"] = b"not an image"
    rows = [{"URL": p, "TEXT": p, "WIDTH": 600, "HEIGHT": 560, "pwatermark": 0.1} for p in files]
    rows += [
        {"URL": "/img/dead.jpg", "TEXT": "dead", "WIDTH": 600, "HEIGHT": 560, "pwatermark": 0.1},
        {"URL": "/img/wm.jpg", "TEXT": "wm", "WIDTH": 600, "HEIGHT": 560, "pwatermark": 0.9},
        {"URL": "/img/tall.jpg", "TEXT": "tall", "WIDTH": 600, "HEIGHT": 1800, "pwatermark": None},
        {"URL": "/img/tiny.jpg", "TEXT": "tiny", "WIDTH": 300, "HEIGHT": 300, "pwatermark": 0.0},
    ]
    cfg = json.loads(json.dumps(_paper_config(tmp_path)["data"]["laion"]))
    cfg.update(img2dataset=img2dataset_exe, processes=1, threads=4, shard_size=3, retries=0, timeout=5)
    cfg.update(min_side=512, min_aspect=0.5, max_aspect=2.0, image_size=64)
    meta = tmp_path / "metadata"
    meta.mkdir()
    with file_server(files) as (url, seen):
        df = pd.DataFrame(rows)
        df["URL"] = url + df["URL"]
        df.to_parquet(meta / "part-0.parquet")
        args = ["run", "--params", json.dumps(cfg), "--metadata", str(meta)]
        assert prepare_laion.main([*args, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "pool")]) == 0
    requested = {p for p, _ in seen}
    assert "/img/wm.jpg" not in requested and "/img/tall.jpg" not in requested and "/img/tiny.jpg" not in requested
    pool = tmp_path / "pool"
    summary = json.loads((pool / "downloads.json").read_text())
    assert summary["downloaded"] == 4 and summary["failed"] == 3 and summary["urls"] == 7
    assert summary["metadata"]["dropped"] == {
        "watermark probability >= 0.5": 1, "aspect ratio out of range": 1, "shorter side below 512": 1,
    }  # fmt: skip
    failures = pd.read_parquet(pool / "failures.parquet")
    dead = failures[failures["url"].str.endswith("/img/dead.jpg")]
    assert len(dead) == 1 and "404" in dead["error_message"].iloc[0]
    assert set(failures["url"].str.rsplit("/", n=1).str[-1]) == {"dead.jpg", "small.jpg", "broken.jpg"}
    # the layout every stage reads: shard-*.tar with <key>.jpg + <key>.json
    samples = list(iter_dir(pool))
    assert len(samples) == 4 and all("jpg" in parts and "json" in parts for _, parts in samples)
    assert sorted(json.loads(parts["json"])["url"].rsplit("/", 1)[-1] for _, parts in samples) == [
        f"{i}.jpg" for i in range(4)
    ]
    assert not (tmp_path / "work").exists()  # a finished run leaves no resumable state behind
    _, images, _ = load_images(pool)  # one size (the centred square at image_size): the stages can read it
    assert images.shape == (4, 64, 64, 3) and abs(int(images[0, 32, 32, 0]) - 200) < 8


def test_stage2_pairs_are_a_seeded_sample_of_the_subset(micro_config, tmp_path):
    pool = tmp_path / "pool"
    assert (
        generate_shapes.main(["--params", json.dumps(micro_config["shapes"]), "--split", "pool", "--out", str(pool)])
        == 0
    )
    keys = [k for k, _ in iter_dir(pool)]
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps({"kept": [{"key": k} for k in keys[::2]]}))
    args = ["pairs", "--images", str(pool), "--subset", str(subset), "--n", "7", "--seed", "1", "--shard-size", "3"]
    assert prepare_laion.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert prepare_laion.main([*args[:-2], "--seed", "2", "--out", str(tmp_path / "b")]) == 0
    a, b = [k for k, _ in iter_dir(tmp_path / "a")], [k for k, _ in iter_dir(tmp_path / "b")]
    assert len(a) == 7 and set(a) <= set(keys[::2]) and set(a) != set(b)
    assert len(list((tmp_path / "a").glob("shard-*.tar"))) == 3
    k, images, _ = load_images(tmp_path / "a")
    _, originals, _ = load_images(pool, k)
    assert np.array_equal(images, originals)  # bytes unchanged


def _relative_update_difference(a: dict, b: dict, init: dict) -> tuple[float, float]:
    """||(a - init) - (b - init)|| / ||a - init|| over the tensors ``init`` names, and ||a - init||."""
    d1 = torch.cat([(a[k] - v).flatten() for k, v in init.items()])
    d2 = torch.cat([(b[k] - v).flatten() for k, v in init.items()])
    return ((d1 - d2).norm() / d1.norm()).item(), d1.norm().item()


def _losses(folder: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader((folder / "loss.csv").open())]


def test_gradient_accumulation_gives_the_one_pass_update_in_both_stages(micro_config, root, tmp_path):
    from test_stage1 import _data, _micro_stage1, _stage1_args, _weights, _weights_init

    from vlv.stages import distill_stage1

    pool, subset = _data(micro_config, tmp_path)
    vision, t2i = root / "models/toy/vision", root / "models/toy/t2i"
    # 4 images per step, each noised twice: one pass, or four of one image (and its two draws); and one
    # pass with one draw per image
    for name, micro, draws in (("one", None, 2), ("acc", 1, 2), ("single", None, 1)):
        params = _micro_stage1(micro_config, steps=2, checkpoint_every=100, micro_batch_size=micro, noise_draws=draws)
        assert (
            distill_stage1.main(_stage1_args(params, pool, subset, vision, t2i, tmp_path / name, tmp_path / f"w{name}"))
            == 0
        )
    one, acc = _weights(tmp_path / "one"), _weights(tmp_path / "acc")
    init = {k: v for k, v in _weights_init(root).items() if k in one and not torch.equal(one[k], v)}
    rel, size = _relative_update_difference(one, acc, init)
    # AdamW divides each update by its gradient's size, so weights with near-zero gradients turn the
    # summation order's float noise into visible update differences (1.3e-4 with the width-128 toy
    # BART, under 1e-4 at width 64). The check is for accumulation mistakes: a micro batch dropped or
    # counted twice changes the gradient by a quarter of the batch, not in its last bits.
    assert size > 1e-3 and rel < 1e-3, rel
    assert _losses(tmp_path / "one") == pytest.approx(_losses(tmp_path / "acc"), rel=1e-5)  # scaled, not summed
    # the second draw is used: the first step's loss is the mean over both draws, not the first's alone
    assert _losses(tmp_path / "single")[0] != pytest.approx(_losses(tmp_path / "one")[0], rel=1e-3)

    pairs, caps = _pairs(micro_config, tmp_path)
    for name, micro in (("one2", None), ("acc2", 3)):  # 8 captions per step: one pass, or passes of 3, 3, 2
        over = {"steps": 2, "batch_size": 8, "checkpoint_every": 100, "micro_batch_size": micro}
        args = _stage2_args(micro_config, root, pairs, caps, tmp_path / name, tmp_path / f"w{name}", **over)
        assert finetune_stage2.main(args) == 0
    one, acc = _captioner_weights(tmp_path / "one2"), _captioner_weights(tmp_path / "acc2")
    init = {f"llm.{k}": v for k, v in load_file(str(root / "models/toy/lm/model.safetensors")).items()}
    rel, size = _relative_update_difference(one, acc, init)
    assert size > 1e-3 and rel < 1e-4, rel
    assert _losses(tmp_path / "one2") == pytest.approx(_losses(tmp_path / "acc2"), rel=1e-5)


def test_cost_report_projects_device_hours_from_measured_rates(tmp_path):
    from vlv.stages import cost_report

    def man(name, **fields):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"device": "cuda:0", "processes": 1, **fields}))
        return f"{name}={path}"

    manifests = [
        man("distill_stage1", images_per_second=1000.0, train_seconds_this_run=60.0, processes=8),
        man("finetune_stage2", captions_per_second=50.0, train_seconds_this_run=10.0),
        man("synthesize_captions", captioned_this_run=0, seconds_this_run=0.0),  # all resumed: no rate
        man("subset", counts={"seen": 3600}, seconds=36.0),
    ]
    scale = {
        "distill_stage1": {"items": 512 * 200_000, "gpus": 8},
        "finetune_stage2": {"items": 64 * 100_000, "gpus": 8},
        "synthesize_captions": {"items": 6_000_000, "gpus": 1},
        "subset": {"items": None, "gpus": 1},
    }
    params = json.dumps({"budget_gpu_hours": 1000, "scale": scale})
    out = tmp_path / "cost.csv"
    assert cost_report.main(["--params", params, "--manifest", *manifests, "--out", str(out)]) == 0
    rows = {r["stage"]: r for r in csv.DictReader(out.open())}
    # stage 1: 1000 images/s on 8 processes = 125 per GPU; 102.4M images -> 819,200 s = 227.56 GPU-hours
    assert float(rows["distill_stage1"]["items_per_second_per_process"]) == 125.0
    assert float(rows["distill_stage1"]["projected_device_hours"]) == pytest.approx(
        512 * 200_000 / 125 / 3600, abs=1e-3
    )
    assert float(rows["distill_stage1"]["projected_wall_hours"]) == pytest.approx(
        512 * 200_000 / 125 / 3600 / 8, abs=1e-3
    )
    assert float(rows["finetune_stage2"]["projected_device_hours"]) == pytest.approx(6_400_000 / 50 / 3600, abs=1e-3)
    assert float(rows["subset"]["projected_device_hours"]) == pytest.approx(0.01)  # as scored: 3600 at 100/s
    assert rows["synthesize_captions"]["projected_device_hours"] == ""
    summary = json.loads(out.with_suffix(".json").read_text())
    total = 512 * 200_000 / 125 / 3600 + 6_400_000 / 50 / 3600 + 0.01
    assert summary["projected_device_hours"] == pytest.approx(total, abs=1e-3) and summary["within_budget"] is True
    assert summary["stages_not_measured"] == ["synthesize_captions"]
    # a CPU-measured rate projects CPU hours: not compared with the GPU budget
    (tmp_path / "subset.json").write_text(
        json.dumps({"device": "cpu", "processes": 1, "counts": {"seen": 10}, "seconds": 1.0})
    )
    assert cost_report.main(["--params", params, "--manifest", *manifests, "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["within_budget"] is None


@pytest.mark.workflow
@pytest.mark.parametrize("profile", ["workstation", "slurm"])
def test_the_committed_snakemake_profiles_plan_the_paper_dag(tmp_path, profile):
    res = run_snakemake(
        workflow_dir(tmp_path), "-n", "--profile", str(ROOT / "profiles" / profile), "all",
        configfiles=(ROOT / "config.yaml", ROOT / "config" / "paper.yaml"),
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert f"Using profile {ROOT / 'profiles' / profile}" in out
    distill = out[out.index("rule distill_stage1:") :]
    resources = distill[distill.index("resources:") : distill.index("\n", distill.index("resources:"))]
    assert "gpu=8" in resources  # launch.stage1.processes GPUs for the accelerate job
    if profile == "slurm":  # the SLURM executor's per-rule resources reach the job
        assert "slurm_partition=gpu" in resources and "runtime=10080" in resources


@pytest.mark.workflow
def test_a_stage_on_two_machines_is_planned_as_one_job_starting_a_launcher_per_machine(tmp_path):
    overlay = tmp_path / "two_machines.yaml"
    overlay.write_text("launch:\n  stage1: {config: config/accelerate/ddp.yaml, processes: 8, machines: 2}\n")
    res = run_snakemake(
        workflow_dir(tmp_path), "-n", "--profile", str(ROOT / "profiles" / "slurm"),
        "--set-resources", "distill_stage1:mpi=srun", "distill_stage1:tasks=2",
        "-p", "results/paper/distill_stage1/encoder",
        configfiles=(ROOT / "config.yaml", ROOT / "config" / "paper.yaml", overlay),
    )  # fmt: skip
    out = res.stdout + res.stderr
    distill = out[out.index("rule distill_stage1:") :]
    resources = distill[distill.index("resources:") : distill.index("\n", distill.index("resources:"))]
    assert "gpu=16" in resources and "nodes=2" in resources and "mpi=srun" in resources and "tasks=2" in resources
    assert "vlv/launch.py" in distill[: distill.index("output:")]  # the launcher is an input
    assert (
        "srun --nodes=2 --ntasks-per-node=1 python -m vlv.launch --config config/accelerate/ddp.yaml "
        "--processes 8 --machines 2 -m vlv.stages.distill_stage1" in out
    )


def test_subset_judges_a_resized_pool_image_by_its_original_size():
    from vlv.data.shards import encode_png
    from vlv.stages.subset import check_image

    cfg = {"min_side": 512, "min_aspect": 0.5, "max_aspect": 2.0}
    png = encode_png(np.zeros((32, 32, 3), np.uint8))

    def sample(**meta):
        return {"png": png, "json": json.dumps(meta).encode()}

    assert check_image(sample(original_width=600, original_height=560), cfg)[1] is None
    assert "too small: 300x300" in check_image(sample(original_width=300, original_height=300), cfg)[1]
    assert "aspect ratio 0.40" in check_image(sample(original_width=600, original_height=1500), cfg)[1]
    assert "too small: 32x32" in check_image({"png": png}, cfg)[1]  # no record of an original: the image itself


@pytest.mark.workflow
@pytest.mark.slow
def test_paper_tiny_runs_the_paper_profiles_rules_end_to_end_on_cpu(tmp_path, img2dataset_exe):
    """The paper profile (config/paper.yaml) with tiny random-weight models of its classes and tiny
    local data: downloads (file:// URLs, pinned SHA-256), COCO, VQAv2 and OK-VQA into shards, LAION through
    img2dataset, the subset, stage 2's pairs, stage 1 and both stage-2 captioners through the
    committed accelerate config with 2 processes, the local VLM teacher (Qwen2.5-VL's class, the
    profile's default), every captioner, Table 3 and
    Table 1's renders and their FID, and the cost report; the COCO sample holds odd files (CMYK,
    16-bit, palette, RGBA, EXIF-rotated, truncated, text)."""
    import paper_tiny

    assert paper_tiny.main(["--out", str(tmp_path / "pt"), "--img2dataset", img2dataset_exe]) == 0
    (tmp_path / "w").mkdir()
    wd = workflow_dir(tmp_path / "w")
    targets = ["results/paper/tables/vqa.csv", "results/paper/reconstruct/encoder/metrics.json"]
    targets += ["results/paper/evaluate/fid/vlv_pairs100.json"]  # Table 1: SD-3-class renders, Inception FID
    files = (ROOT / "config.yaml", ROOT / "config" / "paper.yaml", tmp_path / "pt" / "config.yaml")
    run_snakemake(wd, "--cores", "2", *targets, "results/paper/tables/cost.csv", configfiles=files)
    res = wd / "results" / "paper"
    trained = ("distill_stage1/encoder", *(f"finetune_stage2/{n}_pairs100" for n in ("vlv", "no_stage1", "direct")))
    for name in trained:
        assert json.loads((res / name / "manifest.json").read_text())["processes"] == 2  # one DDP group of 2
    direct = json.loads((res / "finetune_stage2/direct_pairs100/manifest.json").read_text())
    assert direct["validation"]["pairs"] + direct["pairs"] == 24 and direct["validation"]["chosen_step"] in (1, 2)
    assert all(json.loads(p.read_text())["sha256_pinned"] for p in (wd / "data" / "download").glob("*.json"))
    teacher = json.loads((res / "synthesize_captions/manifest.json").read_text())  # the profile's teacher class
    assert teacher["config"]["model"] == str(tmp_path / "pt/models/qwen25vl") and teacher["captions"] == 24
    pool = json.loads((res / "download_laion/pool/downloads.json").read_text())
    assert (
        pool["downloaded"] == 40
        and pool["failed"] == 2
        and pool["metadata"]["dropped"] == {"watermark probability >= 0.5": 1}
    )
    _, images, metas = load_images(res / "prepare_coco/eval")
    assert images.shape[1:] == (32, 32, 3) and all(len(m["captions"]) == 5 for m in metas)
    # the sample's odd files (CMYK, 16-bit, palette, RGBA, EXIF-rotated) are in the split as meant;
    # the broken two are skipped, each named with its reason, and the run goes on with the rest
    skipped = json.loads((res / "prepare_coco/eval/manifest.json").read_text())["skipped"]
    n_eval = paper_tiny.N_EVAL - len(paper_tiny.BROKEN_FILES)
    assert len(images) == n_eval and len(skipped) == 2 and all("undecodable image" in r for r in skipped.values())
    rows = list(csv.DictReader((res / "tables/vqa.csv").open()))
    names = ["reference", "teacher", "vlv_pairs100", "no_stage1_pairs100", "direct_pairs100", "florence2_large"]
    names += ["qwen25vl_7b", "llava15_7b"]
    vqav2 = [r for r in rows if r["dataset"].startswith("VQAv2 val")]
    okvqa = [r for r in rows if r["dataset"] == "OK-VQA val on the evaluation images"]
    assert len(vqav2) + len(okvqa) == len(rows)
    for part in (vqav2, okvqa):
        assert [r["captioner"] for r in part] == [n for n in names for _ in (0, 2)]
    assert {r["metric"] for r in rows} == {"vqa_accuracy"} and {r["questions"] for r in vqav2} == {str(2 * n_eval)}
    on_split = sum(int(k) % 2 for k in json.loads((res / "prepare_coco/eval/images.json").read_text()))
    assert on_split > 0 and {r["questions"] for r in okvqa} == {str(on_split)}  # OK-VQA asks about odd ids only
    metrics = json.loads((res / "tables/vqa.json").read_text())
    assert len(metrics) == len(rows) and "OK-VQA val on the evaluation images: teacher 0-shot" in metrics
    assert len(list(iter_dir(res / "download_laion/pairs"))) == 24  # data.pairs of the subset's images
    renders = {
        k: np.asarray(decode_image(parts["png"])) for k, parts in iter_shard(res / "render_captions/vlv_pairs100.tar")
    }
    assert len(renders) == n_eval * 2 and {im.shape for im in renders.values()} == {(32, 32, 3)}  # x 2 guidances
    assert json.loads((res / "render_captions/vlv_pairs100.manifest.json").read_text())["renderer"].endswith("sd3")
    fid = json.loads((res / "evaluate/fid/vlv_pairs100.json").read_text())  # the TorchScript Inception stand-in
    assert fid["metric"] == "FID" and fid["features"].startswith("Inception-v3") and fid["images"] == n_eval
    assert set(fid["guidance"]) == {"1", "3"} and all(math.isfinite(v) and v >= 0 for v in fid["guidance"].values())
    cost = {r["stage"]: r for r in csv.DictReader((res / "tables/cost.csv").open())}
    assert (
        cost["distill_stage1"]["measured_processes"] == "2"
        and float(cost["distill_stage1"]["projected_device_hours"]) > 0
    )
