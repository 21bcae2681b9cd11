"""Stage 1's speed switches train what the plain path trains (the GPU-speed issue): each one's first
step, loss and gradient, against the plain bf16 path on the CPU; and fused AdamW's update."""

import json

import pytest
import torch

from vlv.bench import stage1 as bench
from vlv.training import adamw

# Stated tolerances against the plain bf16 path (autocast, two passes per batch). Measured on the tiny
# paper-class models (results/figures/stage1_switch_check_cpu.json): loss within 1.3e-4, gradients
# within 4.6e-2 (the compiled UNet: 2.9 times what bf16 itself does against fp32, 1.6e-2), cosine at
# least 0.999.
LOSS_REL = 1e-3
GRAD_REL = 0.1
GRAD_COSINE = 0.99


@pytest.fixture
def tiny_stack(micro_config, tmp_path):
    """The paper's classes at tiny size, on the paper's route, with four Shapes images."""
    cfg = {**micro_config["stage1"], "num_queries": 8, "route": "text_encoder"}
    *inputs, side = bench.paper_sized_inputs(tmp_path, "tiny", 4)
    return {**cfg, "image_size": side}, inputs


def test_each_speed_switch_gives_the_plain_paths_first_step(tiny_stack):
    """frozen_bf16 (pure bf16 text encoder and UNet, autocast off for them), channels_last, one pass
    instead of two and the bf16 vision-feature cache, each alone: the same loss and gradient as the
    plain path, to rounding. (torch.compile's numerics take minutes of compiling on this CPU: they
    are checked by `python -m vlv.bench.stage1 --check`, whose figures are in
    results/figures/stage1_switch_check_cpu.json, and by the GPU benchmark's loss comparison; here,
    that each compile switch compiles the modules the step calls.)"""
    cfg, (images, _, vision, decoder) = tiny_stack
    switches = {k: v for k, v in bench.SWITCHES.items() if not k.startswith("compile")}
    report = bench.switch_check(cfg, vision, decoder, bench.check_images(images, 4), switches)
    assert set(report) == {"plain", "fp32", *switches}
    assert report["fp32"]["grad_rel_err"] > 1e-3  # bf16 against fp32: the yardstick is not zero
    for name in switches:
        r = report[name]
        assert r["loss_rel_diff"] <= LOSS_REL and r["grad_rel_err"] <= GRAD_REL and r["grad_cosine"] >= GRAD_COSINE, (
            name,
            r,
        )
    # and the check can fail: a switch that changes what is trained is caught
    wrong = bench.switch_check(cfg, vision, decoder, bench.check_images(images, 4), {"other_noise": {"noise_draws": 3}})
    assert wrong["other_noise"]["loss_rel_diff"] > LOSS_REL or wrong["other_noise"]["grad_rel_err"] > GRAD_REL
    # the compile switches compile what the step calls (the text model's own forward is not called)
    from vlv.stages import distill_stage1

    enc, dec = distill_stage1.build({**cfg, **bench.COMPILED, "frozen_bf16": False}, vision, decoder, "cpu")
    lm, te = enc.florence.model.language_model, dec.text_encoder
    for module in (dec.unet, te.encoder, te.final_layer_norm, lm.encoder, lm.decoder):
        assert module._compiled_call_impl is not None
    assert te._compiled_call_impl is None and enc.florence.model.vision_tower._compiled_call_impl is None


def test_fused_adamw_makes_the_default_update_and_is_the_default_on_gpus_only():
    torch.manual_seed(0)
    cfg = {"lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.01}
    start = [torch.randn(7, 5), torch.randn(11)]
    runs = {}
    for fused in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = adamw(params, cfg, fused=fused)
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        runs[fused] = torch.cat([p.detach().flatten() for p in params])
    moved = (runs[False] - torch.cat([t.flatten() for t in start])).abs()
    assert (moved > 0).all() and moved.mean() > 1e-3  # every weight moved
    assert torch.allclose(runs[True], runs[False], rtol=0, atol=1e-6)
    assert adamw([torch.nn.Parameter(torch.zeros(2))], cfg).defaults["fused"] is None  # CPU: torch's default


def test_unknown_compile_parts_are_refused(tiny_stack):
    from vlv.stages import distill_stage1

    cfg, (_, _, vision, decoder) = tiny_stack
    with pytest.raises(SystemExit, match="stage1.compile names"):
        distill_stage1.build({**cfg, **bench.SPEED_KEYS, "compile": ["vae"]}, vision, decoder, "cpu")
    assert json.loads(json.dumps(bench.SPEED_KEYS))["compile"] == []
