"""Stage 1: the VLV encoder, the frozen decoder and the distill_stage1 trainer."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, accelerate_launch, finish_together, free_port, killed_at_step
from safetensors.torch import load_file

from vlv.models.frozen_decoder import FrozenT2IDecoder, clip_text_from_embeddings, encoder_route, unet_condition
from vlv.models.hub import MissingModelError
from vlv.models.vlv_encoder import PARTS, VLVEncoder
from vlv.stages import distill_stage1, generate_shapes

PAPER_TRAINABLE = ["language_encoder", "language_decoder", "queries", "projection"]


@pytest.fixture(scope="module")
def toy_parts(root):
    dec = FrozenT2IDecoder(str(root / "models/toy/t2i"))
    enc = VLVEncoder.from_florence(str(root / "models/toy/vision"), num_queries=8, clip_dim=dec.embed_dim)
    return enc, dec


def test_clip_path_on_token_embeddings_equals_the_text_model(toy_parts):
    from transformers import CLIPTextConfig, CLIPTextModel

    _, dec = toy_parts
    ids = dec.tokenizer(
        ["a large red square in the center", ""], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    te = dec.text_encoder
    assert torch.allclose(
        clip_text_from_embeddings(te, te.embeddings.token_embedding(ids)), te(ids).last_hidden_state, atol=1e-6
    )
    torch.manual_seed(0)  # and a random CLIP text encoder of another size (the paper's class)
    rnd = CLIPTextModel(
        CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4)
    ).eval()
    ids = torch.randint(0, 99, (2, 77))
    assert torch.allclose(
        clip_text_from_embeddings(rnd, rnd.embeddings.token_embedding(ids)), rnd(ids).last_hidden_state, atol=1e-5
    )


def test_direct_route_reads_the_text_models_final_norm_only(root, toy_parts):
    _, dec = toy_parts
    direct = FrozenT2IDecoder(str(root / "models/toy/t2i"), route="direct")
    z = 3.0 * torch.randn(2, 8, dec.embed_dim, generator=torch.Generator().manual_seed(0)) + 1.5
    te = direct.text_encoder
    cond = direct.condition(z)
    ln = te.final_layer_norm
    # each token standardised, then the frozen norm's own scale and shift: what the UNet was trained on
    standard = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + ln.eps)
    assert torch.allclose(cond, standard * ln.weight + ln.bias, atol=1e-5)
    assert not torch.allclose(cond, dec.condition(z), atol=1e-3)  # the text-encoder route is another function
    with pytest.raises(ValueError, match="route must be one of"):
        unet_condition(te, z, "straight")


def test_trainable_switch_freezes_exactly_the_named_parts(toy_parts):
    enc, _ = toy_parts
    enc.set_trainable(PAPER_TRAINABLE)
    trainable = {id(p) for p in enc.parameters() if p.requires_grad}
    expected = {id(p) for part in PAPER_TRAINABLE for p in enc.part_parameters(part)}
    assert trainable == expected
    assert not any(p.requires_grad for p in enc.part_parameters("vision_tower"))
    with pytest.raises(ValueError, match="unknown trainable part"):
        enc.set_trainable(["everything"])
    enc.set_trainable(list(PARTS))


@pytest.mark.parametrize("route", ["text_encoder", "direct"])
def test_one_step_moves_only_trainable_weights_and_all_of_them_get_gradients(root, route):
    dec = FrozenT2IDecoder(str(root / "models/toy/t2i"), route=route)
    enc = VLVEncoder.from_florence(str(root / "models/toy/vision"), num_queries=8, clip_dim=dec.embed_dim)
    enc.set_trainable(PAPER_TRAINABLE)
    frozen_before = {n: p.detach().clone() for n, p in enc.named_parameters() if not p.requires_grad}
    decoder_before = {n: p.detach().clone() for n, p in dec.named_parameters()}
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    latents = dec.latent_dist(x).mode()
    noise, t = dec.draw_noise(latents, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-3)
    loss = dec.diffusion_loss(latents, dec.condition(enc(enc.preprocess(images))), noise, t)
    loss.backward()
    missing = [
        n for n, p in enc.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert missing == []
    assert all(p.grad is None for p in dec.parameters())
    opt.step()
    assert all(torch.equal(p, frozen_before[n]) for n, p in enc.named_parameters() if n in frozen_before)
    assert all(torch.equal(p, decoder_before[n]) for n, p in dec.named_parameters())


def _data(micro_config, tmp_path):
    pool = tmp_path / "pool"
    assert (
        generate_shapes.main(["--params", json.dumps(micro_config["shapes"]), "--split", "pool", "--out", str(pool)])
        == 0
    )
    keys = [json.loads(line)["key"] for line in (pool / "scenes.jsonl").read_text().splitlines()]
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps({"kept": [{"key": k} for k in keys[:40]]}))
    return pool, subset


def _stage1_args(params, pool, subset, vision, decoder, out, work):
    return [
        "--params",
        json.dumps(params),
        "--images",
        str(pool),
        "--subset",
        str(subset),
        "--vision",
        str(vision),
        "--decoder",
        str(decoder),
        "--out",
        str(out),
        "--work",
        str(work),
        "--cpu",
    ]


def _micro_stage1(micro_config, **over):
    return {
        **micro_config["stage1"],
        "num_queries": 8,
        "batch_size": 4,
        "steps": 4,
        "warmup_steps": 1,
        "log_every": 1,
        "checkpoint_every": 2,
        **over,
    }


def _weights(folder):
    w = load_file(str(folder / "vlv_head.safetensors"))
    w.update({f"florence.{k}": v for k, v in load_file(str(folder / "florence2" / "model.safetensors")).items()})
    return w


def test_killed_and_resumed_stage1_ends_with_the_same_weights(micro_config, tmp_path, root, monkeypatch):
    pool, subset = _data(micro_config, tmp_path)
    params = _micro_stage1(micro_config)
    vision, t2i = root / "models/toy/vision", root / "models/toy/t2i"
    assert (
        distill_stage1.main(_stage1_args(params, pool, subset, vision, t2i, tmp_path / "ref", tmp_path / "w_ref")) == 0
    )
    with killed_at_step(monkeypatch, 3):
        distill_stage1.main(_stage1_args(params, pool, subset, vision, t2i, tmp_path / "run", tmp_path / "w_run"))
    assert (tmp_path / "w_run" / "latents" / "features.npy").exists()  # the VAE latents, cached on disk
    fewer = tmp_path / "fewer.json"  # the checkpoint is not resumed onto other training data
    kept = json.loads(subset.read_text())
    fewer.write_text(json.dumps({**kept, "kept": kept["kept"][1:]}))
    with pytest.raises(SystemExit, match="other training data"):
        distill_stage1.main(_stage1_args(params, pool, fewer, vision, t2i, tmp_path / "run", tmp_path / "w_run"))
    # resumed with two loader worker processes: the data, and so the weights, are the same
    args = _stage1_args(params, pool, subset, vision, t2i, tmp_path / "run", tmp_path / "w_run")
    assert distill_stage1.main([*args, "--workers", "2"]) == 0
    ref, run = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
    assert ref.keys() == run.keys() and all(torch.equal(ref[k], run[k]) for k in ref)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["resumed_from_step"] == 2 and manifest["loader_workers"] == 2
    assert not (tmp_path / "w_run").exists()  # checkpoints and cache go once the encoder is saved
    enc = VLVEncoder.from_pretrained(tmp_path / "run")  # self-describing, no training state needed
    assert enc(enc.preprocess(np.zeros((1, 32, 32, 3), np.uint8))).shape == (1, 8, 128)


@pytest.mark.slow
def test_two_processes_match_one_process(micro_config, tmp_path, root):
    pool, subset = _data(micro_config, tmp_path)
    params = _micro_stage1(micro_config, steps=3, checkpoint_every=100)
    args = _stage1_args(
        params, pool, subset, root / "models/toy/vision", root / "models/toy/t2i", tmp_path / "one", tmp_path / "w1"
    )
    assert distill_stage1.main(args) == 0
    two = _stage1_args(
        params, pool, subset, root / "models/toy/vision", root / "models/toy/t2i", tmp_path / "two", tmp_path / "w2"
    )
    res = accelerate_launch("vlv.stages.distill_stage1", two)  # through the committed config, as the rule does
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2
    one, two_w = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    diffs = {k: (one[k] - two_w[k]).abs().max().item() for k in one}
    assert max(diffs.values()) < 1e-4, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    moved = max((one[k] - v).abs().max().item() for k, v in _weights_init(root).items() if k in one)
    assert moved > 1e-3  # the runs trained: the agreement is not two untouched copies


def _weights_init(root):
    return {f"florence.{k}": v for k, v in load_file(str(root / "models/toy/vision/model.safetensors")).items()}


def test_paper_classes_at_tiny_size_build_and_train_one_step(micro_config, tmp_path):
    """Florence-2, an SD-2-style UNet (linear projection, 4 blocks), a KL VAE and a CLIP text encoder."""
    from vlv.models.paper_sized import build_stage1_stack

    florence, sd, side = build_stage1_stack(tmp_path, "tiny")
    assert side == 32
    pool, subset = _data(micro_config, tmp_path)
    params = _micro_stage1(
        micro_config, steps=1, cache_latents=False, gradient_checkpointing=True, trainable=PAPER_TRAINABLE
    )
    assert distill_stage1.main(_stage1_args(params, pool, subset, florence, sd, tmp_path / "enc", tmp_path / "w")) == 0
    enc = VLVEncoder.from_pretrained(tmp_path / "enc")
    assert enc.config["clip_dim"] == 32 and enc.config["num_queries"] == 8


def test_paper_sized_configs_have_the_published_parameter_counts():
    """Built on the meta device (no memory): the SD-2.1 UNet and VAE to the parameter."""
    from accelerate import init_empty_weights

    from vlv.models.paper_sized import build_text_encoder, build_unet, build_vae

    with init_empty_weights():
        unet, vae = build_unet("paper", 1024), build_vae("paper")
        te = build_text_encoder("paper", 49408, 49406, 49407, 0)
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert unet.config.sample_size == 48  # 384 px
    assert (te.config.hidden_size, te.config.num_hidden_layers) == (1024, 23)


def test_paper_sized_florence_and_llm_have_the_published_sizes():
    """Florence-2-large (0.77B; DaViT 0.36B) and Qwen2.5-3B (3.09B, 2.77B without embeddings), on the
    meta device. Tied embeddings show as separate tensors there, so they are counted once."""
    from accelerate import init_empty_weights
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from vlv.models.paper_sized import PRESETS
    from vlv.models.toy import build_florence2, florence2_image_tokens

    p = PRESETS["paper"]
    special = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2)
    with init_empty_weights():  # BART-large's vocabulary with the image token
        florence = build_florence2(p["florence"], 51289, 51288, p["florence_image_size"], special)
    tied = ("language_model.encoder.embed_tokens", "language_model.decoder.embed_tokens", "lm_head")
    n = sum(t.numel() for k, t in florence.named_parameters() if not any(x in k for x in tied))
    assert 0.765e9 < n < 0.775e9
    assert 0.355e9 < sum(t.numel() for t in florence.model.vision_tower.parameters()) < 0.365e9
    assert florence2_image_tokens(p["florence"]["vision"], p["florence_image_size"]) == 577
    c = p["llm"]
    config = Qwen2Config(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["layers"], num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
    )  # fmt: skip
    with init_empty_weights():
        llm = Qwen2ForCausalLM(config)
    total = sum(t.numel() for k, t in llm.named_parameters() if k != "lm_head.weight")
    embed = llm.model.embed_tokens.weight.numel()
    assert round(total / 1e9, 2) == 3.09 and round((total - embed) / 1e9, 2) == 2.77


def test_stage1_benchmark_runs_on_paper_classes_at_tiny_size(micro_config, tmp_path, capsys):
    """The benchmark's rows run in one process, one after another, each compared with its reference
    row step by step (on the CPU the tuned row computes in fp32 like its reference, so their losses
    agree closely); a row past the time budget is skipped and said so."""
    from vlv.bench import stage1 as benchmark_stage1

    params = json.dumps({**micro_config["stage1"], "num_queries": 8})
    out = tmp_path / "speed.json"
    args = ["--params", params, "--paper-sized", "tiny", "--n-images", "8", "--batch-size", "4", "--steps", "3"]
    assert benchmark_stage1.main([*args, "--large-batch", "8", "--rows", "cdab", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["settings"]) == ["c_cached_b8", "d_tuned_b8", "a_official_style_b4", "b_ours_b4"]
    assert 0 < report["vision_forward_gflops_per_image"] < report["gflops_per_image"]
    rows = report["settings"]
    assert all(r["images_per_second"] > 0 and r["peak_memory_gib"] is None for r in rows.values())
    assert rows["d_tuned_b8"]["channels_last"] and rows["d_tuned_b8"]["micro_batch_size"] is None
    assert rows["d_tuned_b8"]["reference"] == "c_cached_b8" and rows["b_ours_b4"]["reference"] == "a_official_style_b4"
    assert all(r["loss_within_tolerance"] for r in (rows["d_tuned_b8"], rows["b_ours_b4"]))
    assert len(rows["c_cached_b8"]["losses"]) == 3
    assert "against the target of 210" in capsys.readouterr().out
    assert benchmark_stage1.main([*args, "--rows", "cd", "--budget-s", "0", "--out", str(out)]) == 0
    assert all("past the budget" in r["skipped"] for r in json.loads(out.read_text())["settings"].values())


@pytest.fixture
def fresh_accelerate_state():
    """A stage run in this process with another precision needs accelerate's process-wide state
    cleared before, and after for the tests that follow."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield lambda: AcceleratorState._reset_state(True)
    AcceleratorState._reset_state(True)


def test_unet_speed_settings_store_it_in_bf16_channels_last_compiled_and_compute_the_same_loss(
    micro_config, tmp_path, fresh_accelerate_state
):
    """frozen_bf16 and channels_last change the frozen UNet's storage, not what it computes: the first
    step's loss (before any update) is the plain bf16 run's to rounding. compile: [unet] compiles it in
    place (run here it took 70 s of compiling for the micro UNet, so this test only builds it)."""
    pool, subset = _data(micro_config, tmp_path)
    vision, t2i = ROOT / "models/toy/vision", ROOT / "models/toy/t2i"
    tuned = {"frozen_bf16": True, "channels_last": True}
    params = _micro_stage1(micro_config, precision="bf16", **tuned, compile=["unet"])
    _, dec = distill_stage1.build(params, str(vision), str(t2i), "cpu")
    conv = dec.unet.conv_in.weight
    assert conv.dtype == torch.bfloat16 and conv.is_contiguous(memory_format=torch.channels_last)
    assert dec.unet._compiled_call_impl is not None and dec.text_encoder.dtype == torch.bfloat16
    with pytest.raises(SystemExit, match="needs precision bf16"):
        distill_stage1.build({**params, "precision": "fp32"}, str(vision), str(t2i), "cpu")
    first = {}
    for name, over in (("plain", {}), ("tuned", tuned)):
        fresh_accelerate_state()
        p = _micro_stage1(micro_config, steps=1, precision="bf16", **over)
        assert (
            distill_stage1.main(_stage1_args(p, pool, subset, vision, t2i, tmp_path / name, tmp_path / f"w{name}")) == 0
        )
        first[name] = float(next(csv.DictReader((tmp_path / name / "loss.csv").open()))["loss"])
    assert first["tuned"] == pytest.approx(first["plain"], rel=2e-2) and first["tuned"] != first["plain"]


def test_cached_vision_features_train_like_the_vision_tower_run_each_step(micro_config, tmp_path):
    """Stage 1 with a frozen vision tower reads its features from the cache and ends where the
    uncached run ends, with the tower's drop-path switched on (Florence-2's real config has it): the
    frozen tower stays in eval mode while the rest trains, as it was when the cache was made. The
    cache goes with the checkpoints; a trainable tower is refused."""
    from vlv.models.paper_sized import build_stage1_stack

    florence, sd, _ = build_stage1_stack(tmp_path / "m", "tiny")
    config = json.loads((florence / "config.json").read_text())
    config["vision_config"]["drop_path_rate"] = 0.5
    (florence / "config.json").write_text(json.dumps(config))
    pool, subset = _data(micro_config, tmp_path)
    base = _micro_stage1(micro_config, steps=3, trainable=PAPER_TRAINABLE, checkpoint_every=100)
    enc = VLVEncoder.from_florence(str(florence), 8, 32).eval()
    pv = enc.preprocess(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        assert torch.equal(enc(pv), enc(image_features=enc.image_features(pv)))
    with pytest.raises(ValueError, match="not both"):
        enc(pv, image_features=enc.image_features(pv))
    runs = {}
    for cached in (False, True):
        out, work = tmp_path / f"enc_{cached}", tmp_path / f"w_{cached}"
        params = {**base, "cache_vision_features": cached}
        assert distill_stage1.main(_stage1_args(params, pool, subset, florence, sd, out, work)) == 0
        runs[cached] = _weights(out)
        assert not work.exists()
    moved = max((runs[True][k] - v).abs().max().item() for k, v in _weights_init_from(florence).items())
    assert moved > 1e-4  # it trained
    diffs = {k: (runs[True][k] - runs[False][k]).abs().max().item() for k in runs[False]}
    assert max(diffs.values()) < 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    params = {**base, "cache_vision_features": True, "trainable": [*PAPER_TRAINABLE, "vision_tower"]}
    with pytest.raises(SystemExit, match="frozen vision tower"):
        distill_stage1.main(_stage1_args(params, pool, subset, florence, sd, tmp_path / "x", tmp_path / "wx"))


def _weights_init_from(florence):
    return {f"florence.{k}": v for k, v in load_file(str(florence / "model.safetensors")).items()}


def test_trainable_models_load_in_float32_whatever_their_saved_dtype(tmp_path, root):
    """transformers 5 keeps a checkpoint's dtype; hub checkpoints are often fp16/bf16, and AdamW on
    half-precision weights loses updates below their resolution."""
    from transformers import AutoModelForCausalLM, Florence2ForConditionalGeneration

    from vlv.models.vlv_captioner import VLVCaptioner

    Florence2ForConditionalGeneration.from_pretrained(root / "models/toy/vision", dtype=torch.bfloat16).save_pretrained(
        tmp_path / "f16"
    )
    for f in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        if (root / "models/toy/vision" / f).exists():
            (tmp_path / "f16" / f).write_bytes((root / "models/toy/vision" / f).read_bytes())
    assert json.loads((tmp_path / "f16" / "config.json").read_text())["dtype"] == "bfloat16"
    enc = VLVEncoder.from_florence(str(tmp_path / "f16"), 8, 128)
    assert {p.dtype for p in enc.parameters()} == {torch.float32}
    AutoModelForCausalLM.from_pretrained(root / "models/toy/lm", dtype=torch.bfloat16).save_pretrained(tmp_path / "lm")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "lm" / f).write_bytes((root / "models/toy/lm" / f).read_bytes())
    cap = VLVCaptioner.build(
        str(tmp_path / "f16"), str(root / "models/toy/t2i"), str(tmp_path / "lm"), "text_encoder", 8
    )
    assert {p.dtype for p in cap.parameters()} == {torch.float32}


def test_hub_ids_fail_at_once_offline_saying_what_to_download():
    with pytest.raises(MissingModelError, match="hf download florence-community/Florence-2-large"):
        VLVEncoder.from_florence("florence-community/Florence-2-large", 77, 1024)
    with pytest.raises(MissingModelError, match="hf download stabilityai/stable-diffusion-2-1-base"):
        FrozenT2IDecoder("stabilityai/stable-diffusion-2-1-base")


def test_an_encoder_folder_records_its_route_and_decoding_takes_it(tmp_path, root, toy_parts):
    enc, dec = toy_parts
    VLVEncoder.from_florence(
        str(root / "models/toy/vision"), num_queries=8, clip_dim=dec.embed_dim, route="direct"
    ).save_pretrained(tmp_path / "direct")
    enc.save_pretrained(tmp_path / "unknown")  # no route, as folders saved before it was recorded
    direct = VLVEncoder.from_pretrained(tmp_path / "direct")
    assert json.loads((tmp_path / "direct/vlv_encoder.json").read_text())["route"] == "direct"
    assert encoder_route(direct) == encoder_route(direct, "direct") == "direct"
    with pytest.raises(ValueError, match="trained on route 'direct', not 'text_encoder'"):
        encoder_route(direct, "text_encoder")
    unknown = VLVEncoder.from_pretrained(tmp_path / "unknown")
    assert encoder_route(unknown, "text_encoder") == "text_encoder"
    with pytest.raises(ValueError, match="records no route"):
        encoder_route(unknown)
    with pytest.raises(ValueError, match="route must be one of"):
        encoder_route(unknown, "straight")


def test_vlv_reconstruct_command_writes_pngs_and_reports_a_bad_file(tmp_path, root, capsys):
    from PIL import Image

    from vlv.cli import main as vlv_main

    dec_dim = 128
    VLVEncoder.from_florence(
        str(root / "models/toy/vision"), num_queries=8, clip_dim=dec_dim, route="direct"
    ).save_pretrained(tmp_path / "enc")
    Image.fromarray(np.full((48, 40, 3), 128, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "x").mkdir()
    Image.fromarray(np.full((40, 64, 3), 60, np.uint8)).save(tmp_path / "x" / "a.jpg")  # the same stem
    (tmp_path / "b.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rc = vlv_main(
        [
            "reconstruct",
            str(tmp_path / "b.png"),
            str(tmp_path / "a.png"),
            str(tmp_path / "x"),
            "--encoder",
            str(tmp_path / "enc"),
            "--decoder",
            str(root / "models/toy/t2i"),
            "--steps",
            "2",
            "--guidance",
            "1",
            "3",
            "--out",
            str(out),
        ]
    )
    assert rc == 1  # one file failed, the other was still reconstructed
    assert "b.png: cannot read image" in capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())  # a.png and x/a.jpg do not overwrite each other
    assert names == ["a_jpg_recon_cfg1.png", "a_jpg_recon_cfg3.png", "a_png_recon_cfg1.png", "a_png_recon_cfg3.png"]
    assert Image.open(out / "a_png_recon_cfg3.png").size == (32, 32)
    # the route is the encoder's: another one is refused before anything is decoded
    with pytest.raises(SystemExit, match="trained on route 'direct', not 'text_encoder'"):
        vlv_main(
            ["reconstruct", str(tmp_path / "a.png"), "--encoder", str(tmp_path / "enc"), "--route", "text_encoder"]
        )


@pytest.mark.slow
def test_two_machines_started_from_one_job_train_as_one_group(micro_config, tmp_path, root):
    """Two copies of ``vlv.launch`` on this host stand for the two machines of an allocation (srun
    starts one per node); they must form one 2-process group over TCP that trains like 1 process."""
    pool, subset = _data(micro_config, tmp_path)
    params = _micro_stage1(micro_config, steps=3, checkpoint_every=100)
    vision, t2i = root / "models/toy/vision", root / "models/toy/t2i"
    assert distill_stage1.main(_stage1_args(params, pool, subset, vision, t2i, tmp_path / "one", tmp_path / "w1")) == 0
    args = _stage1_args(params, pool, subset, vision, t2i, tmp_path / "two", tmp_path / "w2")
    launch = [sys.executable, "-m", "vlv.launch", "--config", str(root / "config/accelerate/ddp.yaml")]
    launch += [
        "--processes",
        "1",
        "--machines",
        "2",
        "--port",
        str(free_port()),
        "-m",
        "vlv.stages.distill_stage1",
        *args,
    ]
    machines = [
        subprocess.Popen(
            launch,
            env={**os.environ, "OMP_NUM_THREADS": "1", "VLV_MACHINE_RANK": str(rank), "VLV_MAIN_ADDR": "127.0.0.1"},
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = finish_together(machines, timeout=300)
    assert [m.returncode for m in machines] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "machine 1 of 2, main 127.0.0.1" in outs[1] and "--num_processes 2" in outs[1]
    assert not any("still referenced at the end of training" in out for out in outs)  # (an exit that can hang)
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-4


def test_launch_finds_its_machine_under_slurm_and_refuses_without_a_scheduler(tmp_path, monkeypatch):
    from vlv import launch

    # scontrol as SLURM has it: the job's node list expanded, one host per line
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$3" = "gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    env = {"SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242"}
    assert launch.placement(env) == (1, "gpu07")
    assert launch.main_port(env, None) == 29500 + 242 and launch.main_port(env, 30000) == 30000
    cmd = launch.command("c.yaml", 8, 2, 1, "gpu07", 29742, ["-m", "vlv.stages.finetune_stage2", "--x"])
    assert cmd[cmd.index("--num_processes") + 1] == "16" and cmd[cmd.index("--machine_rank") + 1] == "1"
    assert cmd[-3:] == ["-m", "vlv.stages.finetune_stage2", "--x"]
    with pytest.raises(SystemExit, match="VLV_MACHINE_RANK"):
        launch.placement({})
    monkeypatch.setenv("VLV_MACHINE_RANK", "2")
    with pytest.raises(SystemExit, match="outside 0..1"):
        launch.main(["--config", "c.yaml", "--processes", "1", "--machines", "2", "-m", "vlv.stages.distill_stage1"])


def test_train_mode_keeps_every_part_without_a_trainable_parameter_in_eval():
    from vlv.training import train_mode

    frozen = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).requires_grad_(False)
    mixed = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5), torch.nn.Linear(2, 2))
    mixed[0].requires_grad_(False)  # a frozen base layer beside a trainable one (as with LoRA)
    model = torch.nn.ModuleDict({"tower": frozen, "head": mixed}).eval()
    train_mode(model)
    assert model.training and not frozen.training and not frozen[1].training
    assert mixed.training and mixed[1].training and not mixed[0].training


def test_output_stems_are_distinct_and_stay_plain_where_they_can():
    from vlv.cli import output_stems

    names = output_stems(["p/chelsea.jpg", "p/chelsea.webp", "q/cat.png", "r/cat.png", "dog.png"])
    assert names["p/chelsea.jpg"] == "chelsea_jpg" and names["p/chelsea.webp"] == "chelsea_webp"
    assert names["dog.png"] == "dog"  # unique: the plain stem
    assert names["q/cat.png"].startswith("cat_png_") and names["q/cat.png"] != names["r/cat.png"]
    assert len(set(names.values())) == len(names)
    assert output_stems(["r/cat.png", "q/cat.png"]) == {k: names[k] for k in ("r/cat.png", "q/cat.png")}


def test_stage1_trains_on_the_readable_part_of_a_cut_short_pool(micro_config, tmp_path, root, monkeypatch):
    """A pool shard cut short no longer stops stage 1 (it died with tarfile.ReadError): the images
    before the break train, and the manifest names the shard and what was read of it."""
    from vlv.data import shards

    monkeypatch.setattr(shards, "_BROKEN", {})
    pool, subset = _data(micro_config, tmp_path)
    cut = sorted(pool.glob("shard-*.tar"))[0]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    params = _micro_stage1(micro_config, steps=2)
    vision, t2i = root / "models/toy/vision", root / "models/toy/t2i"
    out = tmp_path / "enc"
    assert distill_stage1.main(_stage1_args(params, pool, subset, vision, t2i, out, tmp_path / "w")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    [broken] = manifest["broken_shards"]
    assert broken["shard"] == str(cut) and 0 < manifest["training_images"] < 40


def _kill_when(proc, ready, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every millisecond); False if it ended first."""
    import signal
    import time

    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.001)
    proc.wait(timeout=timeout)
    return False


@pytest.mark.slow
def test_stage1_killed_with_sigkill_at_any_moment_ends_as_an_uninterrupted_run(micro_config, tmp_path, root):
    """Real kills (SIGKILL, no clean-up) of the stage as its own process: while it fills the latent
    cache, at a random moment while it trains, and while a checkpoint is being written (a ``.tmp``
    file is there); each rerun goes on from what was left, and the final weights equal an
    uninterrupted run's. Dropout is on in the trained language model and drop-path in the frozen
    tower, so a resumed run matches only if the checkpoint restores the random generators.
    (Snakemake itself is not in the loop: it reruns the job, which is this.)"""
    import random
    import shutil
    import time

    pool, subset = _data(micro_config, tmp_path)
    params = _micro_stage1(micro_config, steps=10, checkpoint_every=1)  # a write each step: kills land near one
    vision, t2i = tmp_path / "vision", root / "models/toy/t2i"
    shutil.copytree(root / "models/toy/vision", vision)
    config = json.loads((vision / "config.json").read_text())
    config["text_config"].update(dropout=0.1, attention_dropout=0.1)
    config["vision_config"]["drop_path_rate"] = 0.5
    (vision / "config.json").write_text(json.dumps(config))
    assert distill_stage1.main(_stage1_args(params, pool, subset, vision, t2i, tmp_path / "ref", tmp_path / "wr")) == 0
    work, out = tmp_path / "w", tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "vlv.stages.distill_stage1",
        *_stage1_args(params, pool, subset, vision, t2i, out, work),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(0)
    at_random = {"moment": None}

    def training_for_a_while():  # a random moment after the first checkpoint
        if not list(work.glob("step-*.pt")):
            return False
        at_random["moment"] = at_random["moment"] or time.time() + rng.uniform(0.0, 1.0)
        return time.time() >= at_random["moment"]

    moments = {
        "filling the cache": lambda: (work / "latents").exists(),
        "training": training_for_a_while,
        "writing a checkpoint": lambda: bool(list(work.glob("step-*.tmp"))),
    }
    killed = []
    for name, ready in moments.items():
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _kill_when(proc, ready):
            killed.append(name)
    assert killed[:2] == ["filling the cache", "training"]  # (a write is caught when the poll is quick enough)
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    ref, run = _weights(tmp_path / "ref"), _weights(out)
    assert ref.keys() == run.keys() and all(torch.equal(ref[k], run[k]) for k in ref), killed
    assert json.loads((out / "manifest.json").read_text())["resumed_from_step"] > 0
