"""Stage 2: teacher captions, the caption decoder, captioning, and the Shapes caption judge."""

import json

import numpy as np
import pytest
import torch
from conftest import chat_server, killed_at_step
from safetensors.torch import load_file

from vlv.config import stage_params
from vlv.models.captioners import APICaptioner, APISettings, CaptionFailure, ChatAPI
from vlv.models.paper_sized import build_tiny_llava
from vlv.models.vlv_captioner import TRAINABLE, VLVCaptioner
from vlv.shapes.judge import score_caption
from vlv.shapes.splits import split_scenes
from vlv.shapes.world import Scene, ShapeObject
from vlv.stages import caption, finetune_stage2, generate_shapes, synthesize_captions


@pytest.fixture(scope="module")
def captioner(root):
    torch.manual_seed(0)
    return VLVCaptioner.build(
        str(root / "models/toy/vision"), str(root / "models/toy/t2i"), str(root / "models/toy/lm"), "text_encoder", 8
    )


def test_prefix_positions_carry_no_loss_and_eos_is_in_the_labels(captioner):
    tok = captioner.tokenize(["a red circle at the top", "two shapes: a blue square on the left"], max_tokens=64)
    prefix = torch.randn(2, 8, captioner.llm.config.hidden_size)
    _, mask, labels = captioner.inputs_and_labels(prefix, **tok)
    eos = captioner.tokenizer.eos_token_id
    assert (labels[:, :8] == -100).all()  # the prefix
    for row, m in zip(labels[:, 8:], tok["attention_mask"]):
        n = int(m.sum())
        assert row[n - 1] == eos  # the caption ends with a supervised EOS
        assert (row[:n] != -100).all() and (row[n:] == -100).all()  # padding carries no loss
    assert mask.shape == labels.shape and mask[:, :8].all()
    # the budget counts the EOS: a long caption is cut, and still ends with EOS
    short = captioner.tokenize(["a red circle at the top left and a blue square"], max_tokens=4)["input_ids"][0]
    assert len(short) == 4 and short[-1] == eos


@pytest.mark.parametrize("route", ["text_encoder", "direct"])
def test_psi_reads_what_the_unet_read_on_either_route(root, route):
    from vlv.models.frozen_decoder import FrozenT2IDecoder

    dec = FrozenT2IDecoder(str(root / "models/toy/t2i"), route=route)
    torch.manual_seed(0)
    cap = VLVCaptioner.build(
        str(root / "models/toy/vision"), str(root / "models/toy/t2i"), str(root / "models/toy/lm"), route, 8
    )
    pixels = cap.encoder.preprocess(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        assert torch.allclose(cap.caption_input(pixels), dec.condition(cap.encoder(pixels)), atol=1e-6)


@pytest.mark.parametrize("trainable", sorted(TRAINABLE))
def test_trainable_set_freezes_exactly_what_it_says(captioner, trainable):
    captioner.set_trainable(trainable)
    enc = captioner.encoder
    expected = {id(p) for p in captioner.psi.parameters()}
    if trainable != "mlp":
        expected |= {id(p) for p in captioner.llm.parameters()}
    encoder_parts = {
        "mlp_llm_encoder": ["language_encoder", "language_decoder"],
        "all_but_vision": ["language_encoder", "language_decoder", "queries", "projection"],
        "all": ["language_encoder", "language_decoder", "queries", "projection", "vision_tower"],
    }.get(trainable, [])
    expected |= {id(p) for part in encoder_parts for p in enc.part_parameters(part)}
    got = {id(p) for p in captioner.parameters() if p.requires_grad}
    names = {id(p): n for n, p in captioner.named_parameters()}
    assert got == expected, sorted(names[i] for i in got ^ expected)[:5]
    assert not any(p.requires_grad for p in captioner.text_encoder.parameters())  # always frozen


def test_lora_trains_only_the_adapters_and_merges_on_save(root, tmp_path):
    torch.manual_seed(0)
    cap = VLVCaptioner.build(
        str(root / "models/toy/vision"), str(root / "models/toy/t2i"), str(root / "models/toy/lm"), "text_encoder", 8
    )
    cap.add_lora(r=4, alpha=8)
    cap.set_trainable("mlp_llm")
    llm_trainable = [n for n, p in cap.llm.named_parameters() if p.requires_grad]
    assert llm_trainable and all("lora_" in n for n in llm_trainable)
    cap.save_pretrained(tmp_path / "c")
    weights = load_file(str(tmp_path / "c/llm/model.safetensors"))
    assert not any("lora" in k for k in weights)  # a plain Qwen2 folder, loadable without peft
    again = VLVCaptioner.from_pretrained(tmp_path / "c")
    assert type(again.llm).__name__ == "Qwen2ForCausalLM"


def _pairs(micro_config, tmp_path):
    pairs = tmp_path / "pairs"
    shapes = json.dumps(micro_config["shapes"])
    assert generate_shapes.main(["--params", shapes, "--split", "pairs", "--out", str(pairs)]) == 0
    caps = tmp_path / "captions.jsonl"
    args = ["--params", json.dumps(micro_config["teacher"]), "--shapes", shapes, "--images", str(pairs)]
    assert synthesize_captions.main([*args, "--out", str(caps), "--work", str(tmp_path / "teacher.jsonl")]) == 0
    return pairs, caps


def _stage2_args(micro_config, root, pairs, caps, out, work, **over):
    params = {**micro_config["stage2"], "route": "text_encoder", "num_queries": 8, **over}
    return [
        "--params",
        json.dumps(params),
        "--init",
        "no_stage1",
        "--encoder",
        str(root / "models/toy/vision"),
        "--t2i",
        str(root / "models/toy/t2i"),
        "--llm",
        str(root / "models/toy/lm"),
        "--images",
        str(pairs),
        "--captions",
        str(caps),
        "--out",
        str(out),
        "--work",
        str(work),
        "--cpu",
    ]


def _captioner_weights(folder):
    w = {f"psi.{k}": v for k, v in load_file(str(folder / "psi.safetensors")).items()}
    w.update({f"llm.{k}": v for k, v in load_file(str(folder / "llm/model.safetensors")).items()})
    w.update({f"enc.{k}": v for k, v in load_file(str(folder / "encoder/florence2/model.safetensors")).items()})
    return w


def test_killed_and_resumed_stage2_ends_with_the_same_weights(micro_config, root, tmp_path, monkeypatch):
    pairs, caps = _pairs(micro_config, tmp_path)
    assert finetune_stage2.main(_stage2_args(micro_config, root, pairs, caps, tmp_path / "ref", tmp_path / "w0")) == 0
    with killed_at_step(monkeypatch, 3):
        finetune_stage2.main(_stage2_args(micro_config, root, pairs, caps, tmp_path / "run", tmp_path / "w1"))
    assert (tmp_path / "w1" / "caption_input" / "features.npy").exists()  # the frozen encoder's T(z), on disk
    args = _stage2_args(micro_config, root, pairs, caps, tmp_path / "run", tmp_path / "w1")
    assert finetune_stage2.main([*args, "--workers", "2"]) == 0  # resumed, with loader workers
    assert not (tmp_path / "w1").exists()
    ref, run = _captioner_weights(tmp_path / "ref"), _captioner_weights(tmp_path / "run")
    assert ref.keys() == run.keys() and all(torch.equal(ref[k], run[k]) for k in ref)
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert manifest["resumed_from_step"] == 2 and manifest["pairs"] == micro_config["shapes"]["splits"]["pairs"]["n"]
    init = load_file(str(root / "models/toy/lm/model.safetensors"))
    assert any(not torch.equal(init[k], ref[f"llm.{k}"]) for k in init)  # it trained

    # the saved folder captions by itself (no training state), and the captioning stage uses it
    out = tmp_path / "eval.jsonl"
    args = ["--params", json.dumps(micro_config["stage2"]), "--captioner", "vlv", "--model", str(tmp_path / "run")]
    assert caption.main([*args, "--images", str(pairs), "--n-images", "5", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all(isinstance(r["caption"], str) for r in rows)


def _direct_args(micro_config, root, pairs, caps, out, work):
    # validated every step: the first validation comes before the first checkpoint
    params = {**stage_params(micro_config, "stage2", "direct_pairs100"), "validate_every": 1}
    args = _stage2_args(micro_config, root, pairs, caps, out, work, **params)
    return [*args[:3], "direct", *args[4:]]  # --init direct


def test_direct_captioner_trains_its_set_and_keeps_the_weights_of_its_best_validation(
    micro_config, root, tmp_path, monkeypatch
):
    pairs, caps = _pairs(micro_config, tmp_path)
    n_pairs = micro_config["shapes"]["splits"]["pairs"]["n"]
    params = stage_params(micro_config, "stage2", "direct_pairs100")
    assert params["trainable"] == "all_but_vision" and params["validate_every"] == 2 and params["steps"] == 4
    # the validation part: seeded, disjoint from what trains and from the evaluation split
    rows = [json.loads(line) for line in caps.read_text().splitlines()]
    trained, held = finetune_stage2.held_out(params, {r["key"]: r["caption"] for r in rows})
    eval_keys = {generate_shapes.sample_key(s.id) for s in split_scenes(micro_config["shapes"], "eval")}
    assert len(held) == round(n_pairs * params["validation_percent"] / 100) and not held.keys() & trained.keys()
    assert not held.keys() & eval_keys and len(trained) + len(held) == n_pairs
    assert finetune_stage2.held_out({**params, "seed": 5}, {r["key"]: r["caption"] for r in rows})[1] != held

    # validation says step 2 is best: the saved weights are those of step 2, also when the run is
    # killed after it and resumed
    losses = [2.0, 1.0, 3.0, 4.0]  # at steps 1, 2, 3, 4
    monkeypatch.setattr(finetune_stage2.Validation, "loss", lambda self, model: losses[len(self.rows)])
    assert finetune_stage2.main(_direct_args(micro_config, root, pairs, caps, tmp_path / "ref", tmp_path / "w0")) == 0
    with killed_at_step(monkeypatch, 3):
        finetune_stage2.main(_direct_args(micro_config, root, pairs, caps, tmp_path / "run", tmp_path / "w1"))
    at_step2 = torch.load(tmp_path / "w1/step-00000002.pt", weights_only=True)["trainable"]
    assert finetune_stage2.main(_direct_args(micro_config, root, pairs, caps, tmp_path / "run", tmp_path / "w1")) == 0
    ref = dict(VLVCaptioner.from_pretrained(tmp_path / "ref").named_parameters())
    run = dict(VLVCaptioner.from_pretrained(tmp_path / "run").named_parameters())
    assert ref.keys() == run.keys() and all(torch.equal(ref[k], run[k]) for k in ref)
    trained_names = {n for n, p in VLVCaptioner.from_pretrained(tmp_path / "ref").named_parameters()} & at_step2.keys()
    assert len(trained_names) > 50 and all(torch.equal(at_step2[k], ref[k]) for k in trained_names)
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert manifest["validation"] == {"pairs": len(held), "chosen_step": 2, "validation_loss": 1.0}
    assert manifest["pairs"] == len(trained) and manifest["resumed_from_step"] == 2
    curve = (tmp_path / "run/validation.csv").read_text().splitlines()
    assert curve == ["step,validation_loss", "1,2.0", "2,1.0", "3,3.0", "4,4.0"]

    # what trains is exactly its set: the vision tower and the CLIP text encoder are the starting
    # weights bit for bit, everything in the set moved
    torch.manual_seed(0)
    start = VLVCaptioner.build(str(root / "models/toy/vision"), str(root / "models/toy/t2i"),
                               str(root / "models/toy/lm"), params["route"], params["num_queries"])  # fmt: skip
    start.set_trainable(params["trainable"])
    init = dict(start.named_parameters())
    frozen = {n for n, p in init.items() if not p.requires_grad}
    tower = {id(p) for p in start.encoder.part_parameters("vision_tower")} | {
        id(p) for p in start.text_encoder.parameters()
    }
    assert frozen == {n for n, p in init.items() if id(p) in tower}
    assert all(torch.equal(init[n], ref[n]) for n in frozen)
    moved = {n for n in init if n not in frozen and not torch.equal(init[n], ref[n])}
    parts = {n.split(".")[0] for n in moved} | {n.split(".")[1] for n in moved if n.startswith("encoder.")}
    assert {"psi", "llm", "encoder"} <= parts, parts


def test_frozen_encoder_caches_its_output_and_a_share_of_pairs_is_used(micro_config, root, tmp_path):
    pairs, caps = _pairs(micro_config, tmp_path)
    args = _stage2_args(micro_config, root, pairs, caps, tmp_path / "q", tmp_path / "wq", trainable="mlp", steps=2)
    assert finetune_stage2.main([*args, "--pairs-fraction", "0.25"]) == 0
    manifest = json.loads((tmp_path / "q/manifest.json").read_text())
    assert manifest["pairs"] == round(micro_config["shapes"]["splits"]["pairs"]["n"] * 0.25)
    # mlp: only psi moved; the LM folder is the starting LM, bit for bit
    init = load_file(str(root / "models/toy/lm/model.safetensors"))
    saved = load_file(str(tmp_path / "q/llm/model.safetensors"))
    assert all(torch.equal(init[k], saved[k]) for k in init)


def test_a_refining_captioner_trains_on_and_captions_from_embeddings_refined_on_each_image(
    micro_config, root, tmp_path
):
    from vlv.data.shards import load_images

    cfg = {
        **micro_config,
        "stage1": {**micro_config["stage1"], "refine_steps": 2, "refine_draws": 2, "route": "text_encoder"},
    }
    params = stage_params(cfg, "stage2", "vlv_pairs100")
    assert (params["refine_steps"], params["refine_lr"], params["refine_draws"]) == (2, 0.02, 2)
    for other in ("no_stage1_pairs100", "direct_pairs100", "vlv_pairs100-mlp_llm_encoder"):  # no frozen stage-1 encoder
        assert "refine_steps" not in stage_params(cfg, "stage2", other)
    off = {**micro_config, "stage1": {**micro_config["stage1"], "refine_steps": 0}}
    assert "refine_steps" not in stage_params(off, "stage2", "vlv_pairs100")  # 0 turns it off

    torch.manual_seed(0)
    start = VLVCaptioner.build(
        str(root / "models/toy/vision"), str(root / "models/toy/t2i"), str(root / "models/toy/lm"), "text_encoder", 8
    )
    start.encoder.save_pretrained(tmp_path / "encoder")  # a stage-1 encoder folder (untrained: enough here)
    pairs, caps = _pairs(micro_config, tmp_path)
    args = _stage2_args(micro_config, root, pairs, caps, tmp_path / "cap", tmp_path / "w", **{**params, "steps": 2})
    args[args.index("--init") + 1], args[args.index("--encoder") + 1] = "vlv", str(tmp_path / "encoder")
    assert finetune_stage2.main(args) == 0
    with pytest.raises(SystemExit, match="needs the encoder frozen"):
        finetune_stage2.main([*args[:1], json.dumps({**params, "trainable": "mlp_llm_encoder"}), *args[2:]])

    # the folder carries the decoder and the settings; captioning refines as training did
    about = json.loads((tmp_path / "cap/vlv_captioner.json").read_text())
    assert about["refine"] == {"steps": 2, "lr": 0.02, "draws": 2, "seed": params["seed"]}
    cap = VLVCaptioner.from_pretrained(tmp_path / "cap")
    assert cap.refiner is not None and (tmp_path / "cap/decoder/unet").is_dir()
    images = torch.from_numpy(load_images(pairs)[1][:4])
    pv = cap.encoder.preprocess(images.numpy())
    with torch.no_grad():  # as in captioning: the refinement takes its gradient all the same
        refined = cap.caption_input(pv, images)
        assert torch.equal(refined, cap.caption_input(pv, images))  # the same batch, the same embeddings
        with pytest.raises(ValueError, match="pass the images"):
            cap.caption_input(pv)
        refiner, cap.refiner = cap.refiner, None
        plain = cap.caption_input(pv)
        cap.refiner = refiner
    assert (refined - plain).abs().max() > 1e-4  # the refinement moved them
    odd = cap.refiner.at_decoder_size([np.full((40, 48, 3), 9, np.uint8), images[0].numpy()])  # `vlv caption`'s
    assert odd.shape == (2, *images.shape[1:]) and torch.equal(odd[1], images[0])

    out = tmp_path / "eval.jsonl"
    cap_args = ["--params", json.dumps(params), "--captioner", "vlv", "--model", str(tmp_path / "cap")]
    assert caption.main([*cap_args, "--images", str(pairs), "--n-images", "3", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3


def test_teacher_captioning_resumes_without_duplicates(micro_config, tmp_path):
    pairs = tmp_path / "pairs"
    shapes = json.dumps(micro_config["shapes"])
    assert generate_shapes.main(["--params", shapes, "--split", "pairs", "--out", str(pairs)]) == 0
    work, out = tmp_path / "work/teacher.jsonl", tmp_path / "captions.jsonl"
    args = ["--params", json.dumps(micro_config["teacher"]), "--shapes", shapes, "--images", str(pairs)]
    args += ["--out", str(out), "--work", str(work)]
    with pytest.raises(SystemExit, match="have no teacher caption yet"):  # stopped after 10 images
        synthesize_captions.main([*args, "--limit", "10"])
    assert len(work.read_text().splitlines()) == 10 and not out.exists()
    with work.open("a") as f:  # a kill mid-write leaves a torn line
        f.write('{"key": "100000')
    assert synthesize_captions.main(args) == 0
    lines = work.read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    n = micro_config["shapes"]["splits"]["pairs"]["n"]
    assert len(keys) == len(set(keys)) == n  # every image captioned exactly once
    final = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["key"] for r in final] == sorted(keys)
    assert final[0]["caption"].startswith("The image shows")
    assert synthesize_captions.main(args) == 0  # a rerun captions nothing new
    assert len(work.read_text().splitlines()) == n
    before = out.read_text()
    # the split drawn again with another seed: the same keys, other images. The old captions are not
    # reused: the result equals a run from an empty work file
    other = json.loads(shapes)
    other["splits"]["pairs"]["seed"] += 97
    redrawn = tmp_path / "pairs_other_seed"
    assert generate_shapes.main(["--params", json.dumps(other), "--split", "pairs", "--out", str(redrawn)]) == 0
    again = [a if a != str(pairs) else str(redrawn) for a in args]
    again[again.index("--shapes") + 1] = json.dumps(other)
    assert synthesize_captions.main(again) == 0
    fresh = [a if a != str(work) else str(tmp_path / "fresh.jsonl") for a in again]
    fresh[fresh.index("--out") + 1] = str(tmp_path / "fresh_captions.jsonl")
    assert synthesize_captions.main(fresh) == 0
    assert out.read_text() == (tmp_path / "fresh_captions.jsonl").read_text() != before
    assert len(work.read_text().splitlines()) == 2 * n  # every image captioned again, once
    # another teacher setting: captioned again too
    changed = [
        a if a != json.dumps(micro_config["teacher"]) else json.dumps({**micro_config["teacher"], "max_new_tokens": 7})
        for a in again
    ]
    assert synthesize_captions.main(changed) == 0 and len(work.read_text().splitlines()) == 3 * n


def test_local_vlm_teacher_runs_florence2_and_records_empty_captions(micro_config, root, tmp_path):
    pairs = tmp_path / "pairs"
    shapes = json.dumps(micro_config["shapes"])
    assert generate_shapes.main(["--params", shapes, "--split", "pairs", "--out", str(pairs)]) == 0
    teacher = {**micro_config["teacher"], "backend": "local", "model": str(root / "models/toy/vision")}
    teacher["max_new_tokens"] = 6
    work = tmp_path / "teacher.jsonl"
    args = ["--params", json.dumps(teacher), "--images", str(pairs), "--out", str(tmp_path / "c.jsonl")]
    # the toy Florence-2 was never trained to caption: it answers with nothing, and that is a failure
    with pytest.raises(SystemExit, match="have no teacher caption yet"):
        synthesize_captions.main([*args, "--work", str(work), "--limit", "4"])
    failed = [json.loads(line) for line in work.with_suffix(".failures.jsonl").read_text().splitlines()]
    assert len(failed) == 4 and failed[0]["error"] == "the teacher returned an empty caption"
    assert not work.exists() or work.read_text() == ""


def test_local_chat_vlm_captions_with_the_prompt_and_returns_only_new_text(root, tmp_path):
    from vlv.models.captioners import PAPER_PROMPT, LocalVLM

    build_tiny_llava(root / "models/toy/lm", tmp_path / "llava")
    vlm = LocalVLM(str(tmp_path / "llava"), PAPER_PROMPT, 5, torch.device("cpu"), batch_size=2)
    assert not vlm.florence and vlm._text(PAPER_PROMPT) == f"<|user|><image>{PAPER_PROMPT}<|assistant|>"
    caps = vlm.caption(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    assert not any("perceptive" in c for c in caps)  # the prompt is cut off the answer
    assert all(len(vlm.processor.tokenizer(c).input_ids) <= 10 for c in caps)


def test_qwen25vl_folder_of_the_hub_layout_captions_without_torchvision(root, tmp_path):
    """The paper profile's teacher class: AutoProcessor cannot build Qwen2.5-VL's processor here (its
    video processor needs torchvision); LocalVLM loads the same class without it and captions."""
    from transformers import AutoProcessor, Qwen2_5_VLProcessor

    from vlv.models.captioners import PAPER_PROMPT, LocalVLM
    from vlv.models.paper_sized import build_qwen25vl

    folder = build_qwen25vl(root / "models/toy/lm", tmp_path / "qwen25vl", "tiny")
    assert json.loads((folder / "preprocessor_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"
    with pytest.raises(ImportError, match="(?i)torchvision"):
        AutoProcessor.from_pretrained(folder)
    vlm = LocalVLM(str(folder), PAPER_PROMPT, 6, torch.device("cpu"), batch_size=3)
    assert isinstance(vlm.processor, Qwen2_5_VLProcessor) and not hasattr(vlm.processor, "video_processor")
    text = vlm._text(PAPER_PROMPT)
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    from PIL import Image

    inputs = vlm.processor(text=[text], images=[Image.fromarray(images[0])], return_tensors="pt")
    pad = vlm.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]  # 56 x 56 px: 4 x 4 patches
    assert int((inputs["input_ids"] == pad).sum()) == 4  # merged 2 x 2 into 4 image tokens
    caps = vlm.caption(images)
    assert len(caps) == 3 and not any("perceptive" in c for c in caps)  # only the new text
    assert all(len(vlm.processor.tokenizer(c).input_ids) <= 8 for c in caps)
    prompts = [PAPER_PROMPT, "Hi.", "Describe it."]  # prompts of other lengths: the batch is left-padded
    batched = vlm.generate(images, prompts)
    vlm.batch_size = 1
    assert vlm.generate(images, prompts) == batched  # as one image at a time


def test_teacher_benchmark_times_full_length_captions_after_a_warm_up_batch(tmp_path, capsys):
    from vlv.bench import teacher as benchmark_teacher

    with pytest.raises(SystemExit, match="two batches"):
        benchmark_teacher.main(["--paper-sized", "tiny", "--n-images", "3", "--batch-size", "2"])
    out = tmp_path / "teacher.json"
    args = ["--paper-sized", "tiny", "--models", str(tmp_path / "m"), "--n-images", "6", "--batch-size", "2"]
    assert benchmark_teacher.main([*args, "--max-new-tokens", "5", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["teacher"]
    assert row["images_timed"] == 4 and row["new_tokens_per_caption"] == 5 and row["empty_captions"] == 0
    assert row["images_per_second"] > 0 and row["generated_tokens_per_second"] == pytest.approx(
        5 * row["images_per_second"], rel=0.01
    )
    assert row["captions_projected"] == 6_000_000  # the paper profile's data.pairs
    assert row["device_hours_for_the_captions"] == pytest.approx(6e6 / row["images_per_second"] / 3600, rel=0.01)
    assert "6,000,000 teacher captions" in capsys.readouterr().out
    assert (tmp_path / "m" / "qwen25vl_tiny" / "chat_template.json").exists()  # kept for reuse


def test_api_teacher_retries_rate_limits_and_reports_failures(monkeypatch):
    calls = []

    def flaky(auth, body):
        calls.append((auth, body))
        if len(calls) in (1, 2):  # rate limited twice, then fine
            return 429
        if len(calls) >= 4:  # then the server breaks for good
            return 500
        return "A red  circle\non gray."

    with chat_server(flaky) as url:
        settings = APISettings(
            base_url=url,
            model="test-vlm",
            key_env="VLV_TEST_KEY",
            requests_per_minute=6000,
            max_retries=2,
            timeout_s=5,
            max_tokens=50,
        )
        with pytest.raises(SystemExit, match="VLV_TEST_KEY"):  # no key, no calls
            APICaptioner(settings, "describe")
        monkeypatch.setenv("VLV_TEST_KEY", "sk-test")
        api = APICaptioner(settings, "describe")
        img = np.zeros((8, 8, 3), np.uint8)
        assert api.caption_one(img) == "A red circle on gray."  # after two 429s
        auth, body = calls[-1]
        assert auth == "Bearer sk-test" and body["model"] == "test-vlm"
        assert body["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
        with pytest.raises(CaptionFailure, match="HTTP 500 after 3 attempt"):
            api.caption_one(img)


def test_the_api_key_goes_only_over_https_and_stays_with_its_host(monkeypatch):
    """The key is refused over plain http except to this machine, and a redirect to another origin
    goes on without it (urllib would repeat it there); a redirect within the origin keeps it."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = {}

    class Elsewhere(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (a 302 turns the POST into a GET)
            seen[self.path] = self.headers.get("Authorization")
            data = json.dumps({"choices": [{"message": {"content": "moved"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.startswith("/v1/"):  # the first hop: on to the other path (same origin)
                self.send_response(302)
                self.send_header("Location", self.server.next_url)
                self.end_headers()

    monkeypatch.setenv("VLV_TEST_KEY", "sk-secret")
    settings = dict(model="m", key_env="VLV_TEST_KEY", requests_per_minute=6000, max_retries=0, timeout_s=5,
                    max_tokens=5)  # fmt: skip
    for bad in ("http://api.example.com/v1", "ftp://127.0.0.1/v1"):
        with pytest.raises(SystemExit, match="only over https"):
            ChatAPI(APISettings(base_url=bad, **settings))
    ChatAPI(APISettings(base_url="https://api.example.com/v1", **settings))  # accepted (not called)
    servers = [HTTPServer(("127.0.0.1", 0), Elsewhere) for _ in range(2)]  # two origins (ports)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    first, other = servers
    try:
        for target, expect in ((other, None), (first, "Bearer sk-secret")):
            first.next_url = f"http://127.0.0.1:{target.server_port}/landed"
            api = ChatAPI(APISettings(base_url=f"http://127.0.0.1:{first.server_port}/v1", **settings))
            assert api.complete("hi") == "moved"
            assert seen.pop("/landed") == expect
    finally:
        for server in servers:
            server.shutdown()


def test_vlv_caption_command_on_a_folder_with_a_corrupt_file(root, tmp_path, capsys):
    from PIL import Image

    from vlv.cli import main as vlv_main

    torch.manual_seed(0)
    cap = VLVCaptioner.build(
        str(root / "models/toy/vision"), str(root / "models/toy/t2i"), str(root / "models/toy/lm"), "text_encoder", 8
    )
    cap.save_pretrained(tmp_path / "captioner")
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((40, 48, 3), 50, np.uint8)).save(folder / "c.jpg")
    (folder / "b.png").write_bytes(b"not an image")
    out = tmp_path / "caps.jsonl"
    rc = vlv_main(["caption", str(folder), "--captioner", str(tmp_path / "captioner"), "--max-new-tokens", "8",
                   "--out", str(out)])  # fmt: skip
    assert rc == 1  # one file failed; the others still got captions
    assert "b.png: cannot read image" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "c.jpg"]
    assert all(isinstance(r["caption"], str) for r in rows)
    # stopped while writing c.jpg's line, with a new image since: the rerun mends the end and
    # captions only what is not in the file yet
    text = out.read_text()
    out.write_text(text[: text.index("\n") + 1] + text[text.index("\n") + 1 :][:10])
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(folder / "d.png")
    rc = vlv_main(["caption", str(folder), "--captioner", str(tmp_path / "captioner"), "--max-new-tokens", "8",
                   "--batch-size", "1", "--out", str(out)])  # fmt: skip
    assert rc == 1 and "1 of 4 images already in" in capsys.readouterr().err
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"].rsplit("/", 1)[-1] for r in again] == ["a.png", "c.jpg", "d.png"]
    assert again[:2] == rows  # the same captions for the same images


def _scene():
    def obj(shape, colour, size, row, col, pos):
        return ShapeObject(shape, colour, size, row, col, pos, (0.0, 0.0), 1.0)

    return Scene(
        id=0,
        objects=[obj("circle", "red", "large", 0, 0, "top left"), obj("square", "blue", "small", 2, 2, "bottom right")],
    )


def test_judge_on_hand_written_captions_with_known_errors():
    s = _scene()
    perfect = (
        "The image shows two objects. At the top left there is a large red circle. At the bottom right there is a "
        "small blue square. The red circle is above and to the left of the blue square."
    )
    r = score_caption(s, perfect)
    assert (r.covered, r.hallucinated, r.attributes_correct, r.relations_true, r.count_correct) == (2, 0, 2, 2, True)
    assert r.relation_facts == r.relation_facts_stated == 2
    r = score_caption(s, "a large red circle at the top left and a small green triangle in the center")
    assert (r.covered, r.hallucinated, r.attributes_correct, r.relations_stated) == (1, 1, 1, 0)
    r = score_caption(s, "a small red circle at the bottom left. The red circle is below the blue square.")
    assert (r.covered, r.size_correct, r.position_correct, r.relations_stated, r.relations_true) == (1, 0, 0, 1, 0)
    r = score_caption(s, "The blue square is below the red circle. three shapes.")
    assert (r.relations_true, r.relation_facts_stated, r.count_correct) == (1, 1, False)


def _random_captioner_and_eval(root, tmp_path, micro_config):
    """A VLV captioner of the toy parts with random psi and queries (tmp_path/captioner) and the micro
    evaluation split (returned)."""
    torch.manual_seed(0)
    cap = VLVCaptioner.build(
        str(root / "models/toy/vision"), str(root / "models/toy/t2i"), str(root / "models/toy/lm"), "text_encoder", 8
    )
    cap.save_pretrained(tmp_path / "captioner")
    ev = tmp_path / "eval"
    assert (
        generate_shapes.main(["--params", json.dumps(micro_config["shapes"]), "--split", "eval", "--out", str(ev)]) == 0
    )
    return ev


def test_batched_generation_gives_the_captions_of_one_at_a_time(root, tmp_path, micro_config, capsys):
    from vlv.bench import stage2 as benchmark_stage2

    ev = _random_captioner_and_eval(root, tmp_path, micro_config)
    out = tmp_path / "speed.json"
    args = ["--captioner", str(tmp_path / "captioner"), "--images", str(ev), "--n-images", "6", "--batch-size", "3"]
    assert benchmark_stage2.main([*args, "--max-new-tokens", "10", "--num-beams", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["captions_that_differ"] == 0 and result["images"] == 6
    assert "batched / one-at-a-time" in capsys.readouterr().out


def test_stage2_training_benchmark_runs_on_paper_classes_at_tiny_size(micro_config, root, tmp_path, capsys):
    """Teacher-length captions (every sample max_caption_tokens long), the configured setting and one
    without checkpointing, each through finetune_stage2 in its own process, and the configured setting
    launched through the committed FSDP config (on this CPU accelerate runs it unsharded; the manifest
    says which it was)."""
    from transformers import AutoTokenizer

    from vlv.bench import stage2_training as benchmark_stage2_training

    tok = AutoTokenizer.from_pretrained(root / "models/toy/lm")
    long = benchmark_stage2_training.long_captions(tok, 2, 40)
    assert all(len(tok(c)["input_ids"]) >= 40 for c in long) and long[0] != long[1]
    from vlv.config import stage_params

    cfg = {**micro_config, "stage2": {**micro_config["stage2"], "trainable": "mlp_llm_encoder"}}  # as config/paper.yaml
    params = {**stage_params(cfg, "stage2"), "max_caption_tokens": 40}
    params.update(batch_size=4, micro_batch_size=2, gradient_checkpointing=True, route="text_encoder", num_queries=77)
    out = tmp_path / "speed.json"
    args = ["--params", json.dumps(params), "--paper-sized", "tiny", "--models", str(tmp_path / "m"), "--n-images", "8"]
    fsdp = ["--fsdp", str(root / "config/accelerate/fsdp.yaml")]
    assert benchmark_stage2_training.main([*args, "--steps", "3", "--micro-b", "4", *fsdp, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    c = report["settings"]["c_fsdp"]
    assert c["samples_per_second"] > 0 and c["distributed_type"] == ("FSDP" if torch.cuda.is_available() else "NO")
    assert report["tokens_per_sample"] == 77 + 40 and report["tflops_per_sample"] > 0
    a, b = report["settings"]["a_config"], report["settings"]["b_no_checkpointing"]
    assert a["gradient_checkpointing"] and not b["gradient_checkpointing"] and b["micro_batch_size"] == 4
    assert all(r["samples_per_second"] > 0 and r["tokens_per_second"] > 0 for r in (a, b))
    assert (tmp_path / "m" / "llm" / "config.json").exists() and (
        tmp_path / "m" / "encoder" / "vlv_encoder.json"
    ).exists()
    assert "samples/s" in capsys.readouterr().out


def test_arena_rubric_levels_on_hand_written_captions():
    from vlv.shapes.judge import arena_rating

    s = _scene()
    full = (
        "The image shows two objects. At the top left there is a large red circle. At the bottom right there is a "
        "small blue square. The red circle is above and to the left of the blue square."
    )
    no_relation = "At the top left there is a large red circle. At the bottom right there is a small blue square."
    one_object = "At the top left there is a large red circle."
    vague = "a red circle"
    wrong_relation = full.replace("above and to the left of", "below")
    invented = one_object + " In the center there is a small green triangle."
    two_errors = "At the bottom left there is a large red circle. In the center there is a small green triangle."
    levels = {c: arena_rating(score_caption(s, c)) for c in (full, no_relation, one_object, vague)}
    assert list(levels.values()) == [6, 4, 3, 3]  # no hallucination: coverage decides 6 / 4 / 3
    assert arena_rating(score_caption(s, no_relation + " The red circle is above the blue square.")) == 5
    assert arena_rating(score_caption(s, wrong_relation)) == 2  # informative, one false relation
    assert arena_rating(score_caption(s, invented)) == 1  # limited, one invented object
    assert arena_rating(score_caption(s, two_errors)) == 0  # wrong position and an invented object


def test_captioning_streams_the_split_in_chunks_with_the_captions_of_one_pass(
    root, tmp_path, micro_config, monkeypatch
):
    ev = _random_captioner_and_eval(root, tmp_path, micro_config)
    params = json.dumps({**micro_config["stage2"], "caption_batch_size": 2, "num_beams": 1, "max_new_tokens": 6})
    args = ["--params", params, "--captioner", "vlv", "--model", str(tmp_path / "captioner"), "--images", str(ev)]
    assert caption.main([*args, "--n-images", "7", "--out", str(tmp_path / "one.jsonl")]) == 0
    monkeypatch.setattr(caption, "CHUNK_IMAGES", 3)  # chunks of 4 images (two batches of 2), then 3
    assert caption.main([*args, "--n-images", "7", "--out", str(tmp_path / "chunks.jsonl")]) == 0
    one = (tmp_path / "one.jsonl").read_text()
    assert one == (tmp_path / "chunks.jsonl").read_text()
    keys = [json.loads(line)["key"] for line in one.splitlines()]
    assert keys == [json.loads(line)["key"] for line in (ev / "scenes.jsonl").read_text().splitlines()][:7]


def test_caption_memory_benchmark_runs_the_command_per_size(tmp_path, capsys):
    """The memory benchmark of vlv caption (figures: results/figures/caption_memory_cpu.json) at tiny sizes."""
    from vlv.bench import caption_memory

    out = tmp_path / "memory.json"
    assert caption_memory.main(["--sizes", "3", "5", "--side", "40", "--batch-size", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["captions"] for r in report["sizes"].values()] == [3, 5]
    assert all(r["peak_rss_mib"] > 50 for r in report["sizes"].values()) and report["ratio_last_over_first"] > 0
    assert "peak for 5 / peak for 3" in capsys.readouterr().out
