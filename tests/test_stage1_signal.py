"""Issue 23: the diagnosis of stage 1's signal, and the levers (timestep sampling, antithetic
noise, the EMA of the weights)."""

import json

import pytest
import torch
from conftest import killed_at_step, run_snakemake

from vlv.shapes.world import WorldSpec, sample_scenes
from vlv.stages.diagnose_stage1 import canonical_caption, stratified, swap_shapes
from vlv.stages.distill_stage1 import check_levers, draw_step_noise, draw_timesteps, edge_weights

BASE = {"timestep_sampling": "uniform", "logit_normal": [0.0, 1.0], "timestep_range": None, "antithetic_noise": False}


def _t(seed=0, draws=2, batch=32, total=1000, **over):
    return draw_timesteps({**BASE, **over}, torch.Generator().manual_seed(seed), draws, batch, total)


def test_uniform_timesteps_are_the_draws_stage1_always_made():
    # the default consumes the generator exactly as before the levers: default runs keep their bytes
    expected = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(7))
    assert torch.equal(_t(seed=7), expected)
    banded = _t(timestep_range=[300, 700], batch=4096)
    assert banded.min() >= 300 and banded.max() <= 699 and banded.max() - banded.min() > 390


def test_stratified_timesteps_take_one_from_each_stratum():
    t = _t(timestep_sampling="stratified", draws=2, batch=50, total=1000)  # 100 draws, strata of 10 steps
    assert t.shape == (2, 50)
    assert torch.equal(torch.sort(t.flatten() // 10).values, torch.arange(100))
    ranged = _t(timestep_sampling="stratified", draws=2, batch=20, timestep_range=[200, 600])
    assert torch.equal(torch.sort((ranged.flatten() - 200) // 10).values, torch.arange(40))
    assert not torch.equal(t[0], torch.sort(t[0]).values)  # shuffled over images, not in stratum order


def test_logit_normal_timesteps_follow_their_mean():
    centred = _t(timestep_sampling="logit_normal", batch=20000).float()
    heavy = _t(timestep_sampling="logit_normal", logit_normal=[1.0, 1.0], batch=20000).float()
    assert abs(centred.median().item() - 500) < 15  # sigmoid(N(0, 1)): median at the range's middle
    # sigmoid(1) = 0.731: the median moves to heavy noise (high t)
    assert abs(heavy.median().item() - 731) < 15
    assert centred.min() >= 0 and centred.max() <= 999


def test_antithetic_draws_pair_each_noise_with_its_negation():
    t = _t(antithetic_noise=True, draws=4, batch=8)
    assert torch.equal(t[:2], t[2:])  # each pair at one timestep
    noise = draw_step_noise(torch.Generator().manual_seed(0), 4, 8, (2, 3, 3), antithetic=True)
    assert noise.shape == (4, 8, 2, 3, 3)
    assert torch.equal(noise[:2] + noise[2:], torch.zeros_like(noise[:2]))
    assert noise[:2].abs().min() > 0  # not a zero pair: drawn noise
    plain = draw_step_noise(torch.Generator().manual_seed(0), 4, 8, (2, 3, 3), antithetic=False)
    assert torch.equal(plain, torch.randn((4, 8, 2, 3, 3), generator=torch.Generator().manual_seed(0)))


def test_edge_weights_lean_to_boundaries_and_keep_the_loss_scale():
    from vlv.models.t2i import denoising_loss

    latents = torch.zeros(2, 3, 8, 8)
    latents[0, :, 2:5, 2:5] = 1.0  # a square: its boundary is where the neighbour differences are
    latents[1, 1, :, 4:] = -2.0  # a vertical edge
    w = edge_weights(latents, 4.0)
    assert w.shape == (2, 1, 8, 8)
    assert torch.allclose(w.mean((2, 3)), torch.ones(2, 1))  # the loss keeps its scale
    assert w[0, 0, 3, 3] < w[0, 0, 1, 2] and w[0, 0, 3, 3] == w[0, 0, 7, 7]  # inside = far away < edge
    assert w[1, 0, 0, 3] > 1 > w[1, 0, 0, 0]
    flat = edge_weights(torch.ones(1, 3, 8, 8), 4.0)  # no edges: all weights 1
    assert torch.allclose(flat, torch.ones_like(flat))

    class Unet(torch.nn.Module):  # a stand-in predicting zeros, to check the weighting arithmetic only
        dtype = torch.float32

        def forward(self, x, t, encoder_hidden_states):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    from diffusers import DDPMScheduler

    sched, noise, t = DDPMScheduler(), torch.randn(2, 3, 8, 8), torch.tensor([10, 500])
    cond = torch.zeros(2, 1, 4)
    plain = denoising_loss(Unet(), sched, latents, cond, noise, t, per_sample=True)
    ones = denoising_loss(Unet(), sched, latents, cond, noise, t, per_sample=True, weight=torch.ones(2, 1, 8, 8))
    weighted = denoising_loss(Unet(), sched, latents, cond, noise, t, per_sample=True, weight=w)
    assert torch.allclose(plain, ones) and torch.allclose(weighted, (noise.pow(2) * w).flatten(1).mean(1))


def test_lever_settings_that_cannot_work_are_refused():
    with pytest.raises(SystemExit, match="noise_draws must be even"):
        check_levers({**BASE, "antithetic_noise": True, "noise_draws": 3}, 1000)
    with pytest.raises(SystemExit, match="timestep_range"):
        check_levers({**BASE, "timestep_range": [500, 1200], "noise_draws": 2}, 1000)
    with pytest.raises(SystemExit, match="timestep_sampling"):
        check_levers({**BASE, "timestep_sampling": "cosine", "noise_draws": 2}, 1000)
    check_levers({**BASE, "antithetic_noise": True, "noise_draws": 2, "timestep_range": [0, 1000]}, 1000)


def _train_linear(tmp_path, name, ema_decay, steps=6):
    """A linear model trained by ``vlv.training.train`` (the loop of every stage); returns its final
    weights and the raw weights after each step."""
    from vlv.training import make_accelerator, train

    acc = make_accelerator(True, "fp32")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    cfg = {"steps": steps, "lr": 0.05, "betas": [0.9, 0.99], "weight_decay": 0.0, "warmup_steps": 0,
           "final_lr_ratio": 1.0, "grad_clip": 100.0, "log_every": 1, "checkpoint_every": 2, "ema_decay": ema_decay}  # fmt: skip

    def step_loss(m, step, batch):
        loss = (m(x * (1 + step % 3)) - 1).pow(2).mean()
        acc.backward(loss)
        return loss.detach()

    raw = []
    run = train(
        acc, model, cfg, step_loss, stage="linear", work=tmp_path / f"w_{name}", out=tmp_path / name, settings=cfg,
        after_step=lambda m, s: raw.append([p.detach().clone() for p in m.parameters()]),
    )  # fmt: skip
    return [p.detach().clone() for p in run.model.parameters()], raw


def test_ema_weights_follow_the_formula_and_survive_a_kill(tmp_path, monkeypatch):
    torch.manual_seed(0)
    init = [p.detach().clone() for p in torch.nn.Linear(3, 2).parameters()]
    final, raw = _train_linear(tmp_path, "ref", ema_decay=0.8)
    assert len(raw) == 6
    ema = init
    for n, weights in enumerate(raw, start=1):  # diffusers' ramp: 0 at the first update, then n / (9 + n), capped
        d = 0.0 if n == 1 else min(0.8, n / (9 + n))
        ema = [d * e + (1 - d) * w for e, w in zip(ema, weights)]
    assert all(torch.allclose(f, e, atol=1e-6) for f, e in zip(final, ema))
    assert not all(torch.allclose(f, w, atol=1e-4) for f, w in zip(final, raw[-1]))  # the average, not the last
    with killed_at_step(monkeypatch, 5):  # dies after the step-4 checkpoint
        _train_linear(tmp_path, "run", ema_decay=0.8)
    resumed, _ = _train_linear(tmp_path, "run", ema_decay=0.8)
    assert all(torch.equal(a, b) for a, b in zip(final, resumed))
    plain, raw_plain = _train_linear(tmp_path, "plain", ema_decay=None)
    assert all(torch.equal(a, b) for a, b in zip(plain, raw_plain[-1]))  # off: the last weights


def test_cell_labels_name_each_occupied_cell():
    from vlv.stages.diagnose_stage1 import cell_labels

    spec = WorldSpec()
    scenes = sample_scenes(spec, seed=3, n=20)
    shape, size = cell_labels(scenes, spec)
    assert shape.shape == (20, 9) and size.shape == (20, 9)
    for i, scene in enumerate(scenes):
        assert int((shape[i] > 0).sum()) == len(scene.objects) == int((size[i] > 0).sum())
        for o in scene.objects:
            assert spec.shapes[shape[i, o.row * 3 + o.col] - 1] == o.shape
            assert list(spec.sizes)[size[i, o.row * 3 + o.col] - 1] == o.size


def test_swapped_shapes_change_only_shapes():
    spec = WorldSpec()
    scenes = sample_scenes(spec, seed=5, n=200)
    kinds = set()
    for scene in scenes:
        swapped, kind = swap_shapes(scene, spec)
        kinds.add(kind)
        old, new = [o.shape for o in scene.objects], [o.shape for o in swapped.objects]
        assert new != old
        if kind == "permuted":  # the same bag of shapes, bound to other objects
            assert sorted(new) == sorted(old)
        else:  # one object, or all of one shape: every shape replaced
            assert all(a != b for a, b in zip(old, new))
        assert [(o.colour, o.size, o.position) for o in swapped.objects] == [
            (o.colour, o.size, o.position) for o in scene.objects
        ]
        words, swapped_words = canonical_caption(scene, 0).split(), canonical_caption(swapped, 0).split()
        differ = [(a, b) for a, b in zip(words, swapped_words) if a != b]
        assert len(words) == len(swapped_words) and differ and all(a in spec.shapes for a, _ in differ)
    assert kinds == {"permuted", "replaced"}
    chosen = stratified(scenes, 3)
    assert sorted(len(scenes[i].objects) for i in chosen) == [1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_diagnose_stage1_rule_on_the_micro_run(micro_all_copy):
    wd = micro_all_copy
    run_snakemake(wd, "--cores", "2", "results/diagnose_stage1/encoder/signal.json")
    out = wd / "results/diagnose_stage1/encoder"
    r = json.loads((out / "signal.json").read_text())
    assert r["images"] == 6 and sorted(r["objects_per_image"]) == [1, 1, 2, 2, 3, 3]
    assert r["timesteps"] == [100, 900] and r["log_snr"][0] > 0 > r["log_snr"][1]
    gaps = r["gaps_to_true_caption"]
    assert set(gaps) == {"encoder", "shapes_swapped", "empty_caption"}
    assert set(gaps["encoder"]) == {"all", "1", "2", "3"}
    # the committed toy decoder reads shapes: a swapped caption costs it at low noise, an empty one
    # at heavy noise (paired over the same noise, so the sign is clear even on six images)
    assert gaps["shapes_swapped"]["all"]["by_t"][0]["gap"] > 0.02
    assert gaps["empty_caption"]["all"]["by_t"][1]["gap"] > 0
    free = r["free_embeddings"]
    sources = {"encoder", "free_from_encoder", "free_from_caption", "true_caption", "empty_caption"}
    assert set(free["scores"]) == sources | {"free_from_encoder@1"}  # (a snapshot at the last step is the end)
    assert set(free["training_loss"]["free_from_caption"]) == {"loss_first", "loss_last"}
    capacity = r["capacity"]  # (c) ran its 3 steps on the micro pool and scored the six images
    assert capacity["steps"] == 3 and capacity["all"]["objects"] == 12
    assert set(capacity) >= {"1", "2", "3"} and 0 <= capacity["all"]["shape_right"] <= 1
    assert not (out / "capacity_work").exists() and (out / "capacity" / "loss.csv").exists()
    assert (out / "signal.png").stat().st_size > 0 and (out / "grid.png").stat().st_size > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "diagnose_stage1" and len(manifest["keys"]) == 6


def test_refine_moves_embeddings_to_a_lower_loss_chunk_by_chunk(root):
    """Semi-amortised inference: a few Adam steps of stage 1's loss on the image itself lower that
    loss at draws it never saw; no step leaves the embeddings as they are; chunk k is refined as if
    alone with seed + k * batch (so the same images in the same order give the same embeddings)."""
    from vlv.models.frozen_decoder import FrozenT2IDecoder
    from vlv.models.refine import refine
    from vlv.shapes.world import render_array
    from vlv.stages.diagnose_stage1 import caption_embeddings
    from vlv.stages.reconstruct import image_latents

    dec = FrozenT2IDecoder(str(root / "models/toy/t2i"), route="direct")
    spec = WorldSpec()
    latents = image_latents(dec, render_array(sample_scenes(spec, 5, 3), spec))
    z0 = caption_embeddings(dec, [""] * 3)
    same, record, _ = refine(dec, latents, z0, 0, 0.02, 2, 0)
    assert torch.equal(same, z0) and record == {}
    z, record, shots = refine(dec, latents, z0, 8, 0.05, 2, 0, snapshots=(4,), batch=2)
    assert set(record) == {"loss_first", "loss_last"} and shots[4].shape == z.shape

    def held_out_loss(emb):  # draws the refinement did not use
        g = torch.Generator().manual_seed(123)
        t = torch.randint(0, 1000, (4 * 3,), generator=g)
        noise = torch.randn((4 * 3, *latents.shape[1:]), generator=g)
        with torch.no_grad():
            return dec.diffusion_loss(latents.repeat(4, 1, 1, 1), dec.condition(emb).repeat(4, 1, 1), noise, t).item()

    assert held_out_loss(z) < held_out_loss(z0)
    alone, _, _ = refine(dec, latents[2:], z0[2:], 8, 0.05, 2, 0 + 2, batch=2)
    assert torch.allclose(alone, z[2:], atol=1e-6) and not torch.allclose(alone, z0[2:])


def test_reconstruct_refines_the_embeddings_when_asked(micro_config, root, tmp_path):
    """reconstruct with stage1.refine_steps renders refined embeddings (a fresh encoder around the toy
    tower: what matters is that the refinement ran and lowered the loss on these images)."""
    from vlv.config import stage_params
    from vlv.models.vlv_encoder import VLVEncoder
    from vlv.stages import generate_shapes, reconstruct

    images = tmp_path / "eval"
    shapes = json.dumps(micro_config["shapes"])
    assert generate_shapes.main(["--params", shapes, "--split", "eval", "--out", str(images)]) == 0
    base = {
        **stage_params(micro_config, "reconstruct"),
        "num_queries": 77,
    }  # as many as a caption: the loss is compared
    encoder = tmp_path / "encoder"
    width = json.loads((root / "models/toy/t2i/text_encoder/config.json").read_text())["hidden_size"]
    fresh = VLVEncoder.from_florence(str(root / "models/toy/vision"), base["num_queries"], width, route=base["route"])
    fresh.save_pretrained(encoder)
    losses = {}
    for steps in (0, 4):
        params = {**base, "refine_steps": steps, "refine_lr": 0.05, "reconstruct_guidance": [2.0], "n_eval_images": 4}
        out = tmp_path / f"r{steps}"
        argv = ["--params", json.dumps(params), "--encoder", str(encoder), "--decoder", str(root / "models/toy/t2i"),
                "--images", str(images), "--shapes", shapes, "--out", str(out)]  # fmt: skip
        assert reconstruct.main(argv) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        losses[steps] = sum(metrics["denoising_loss"]["reconstruction"].values())
        if steps:
            assert metrics["refine"]["steps"] == 4 and metrics["refine"]["lr"] == 0.05
            assert metrics["refine"]["loss_last"] < metrics["refine"]["loss_first"]
        else:
            assert metrics["refine"] is None
        assert "colour_shape_recall" in metrics["detector"]["recon cfg2"]
    assert losses[4] < losses[0]  # refined on these images: their loss at other noise is lower
