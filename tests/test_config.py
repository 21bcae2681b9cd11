import copy
import json

import pytest

from vlv.config import TOY_FILES, ConfigError, load_config, stage_params, typed_overrides, validate_config


def test_toy_paper_and_micro_configs_validate(root):
    workflow = validate_config(load_config(root / "config.yaml"))
    assert "pretrain_toy" not in workflow  # the stand-ins' pretraining is an overlay of its own
    assert validate_config(load_config(*TOY_FILES))["pretrain_toy"]["t2i"]["train"]["steps"] > 0
    with pytest.raises(ConfigError, match="config/pretrain_toy.yaml"):
        stage_params(workflow, "pretrain_toy.t2i")
    paper = validate_config(load_config(root / "config.yaml", root / "config" / "paper.yaml"))
    assert paper["profile"] == "paper"
    assert paper["models"]["t2i"] == "stabilityai/stable-diffusion-2-1-base"
    assert paper["stage1"]["image_size"] == 384 and paper["stage1"]["lr"] == 5e-5
    assert paper["pathvars"]["results"] == "results/paper"
    validate_config(load_config(*TOY_FILES, root / "tests" / "config.micro.yaml"))


def test_unknown_key_is_named(toy_config):
    cfg = copy.deepcopy(toy_config)
    cfg["shapes"]["colour"] = ["red"]
    with pytest.raises(ConfigError, match=r"unknown config key 'shapes\.colour'"):
        validate_config(cfg)


def test_unknown_nested_key_is_named(toy_config):
    cfg = copy.deepcopy(toy_config)
    cfg["pretrain_toy"]["t2i"]["train"]["stepz"] = 3
    with pytest.raises(ConfigError, match=r"pretrain_toy\.t2i\.train\.stepz"):
        validate_config(cfg)


def test_mistyped_value_is_named(toy_config):
    cfg = copy.deepcopy(toy_config)
    cfg["stage1"]["lr"] = "fast"
    with pytest.raises(ConfigError, match=r"'stage1\.lr'.*not of type 'number'"):
        validate_config(cfg)


def test_profiles_cannot_share_an_output_root(toy_config):
    cfg = copy.deepcopy(toy_config)
    cfg["profile"] = "paper"  # paper values written under the toy root would mix artefacts
    with pytest.raises(ConfigError, match=r"pathvars\.results"):
        validate_config(cfg)


def test_overlay_merges_deeply(tmp_path, root):
    over = tmp_path / "o.yaml"
    over.write_text("shapes:\n  splits:\n    eval:\n      n: 7\n")
    cfg = load_config(root / "config.yaml", over)
    assert cfg["shapes"]["splits"]["eval"] == {"seed": 3, "n": 7}
    assert cfg["shapes"]["splits"]["pool"]["n"] == 20000


def test_command_line_overrides_are_read_as_the_schema_wants(toy_config):
    # what Snakemake hands over for --config stage1='{steps: 100, lr: 1e-4}' (nested values as text)
    over = {"stage1": {"steps": "100", "lr": "1e-4", "route": "text_encoder"}, "stage2": {"pair_percents": ["10"]}}
    cfg = copy.deepcopy(toy_config)
    for key, values in over.items():
        cfg[key].update(copy.deepcopy(values))
    validate_config(typed_overrides(cfg, over))
    assert cfg["stage1"]["steps"] == 100 and cfg["stage1"]["lr"] == 1e-4
    assert cfg["stage1"]["route"] == "text_encoder" and cfg["stage2"]["pair_percents"] == [10]
    cfg["stage1"]["steps"] = "many"  # no reading of it passes: still refused, by name
    with pytest.raises(ConfigError, match=r"'stage1\.steps'"):
        validate_config(typed_overrides(cfg, {"stage1": {"steps": "many"}}))


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, root):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1:\n  steps: 3\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line 4, column 1: not valid YAML"):
        load_config(root / "config.yaml", bad)


def test_stage_params_gather_what_each_stage_needs(toy_config, capsys):
    from vlv.config import main, stage_params

    s2 = stage_params(toy_config, "stage2", "vlv_pairs25-mlp")
    assert s2["trainable"] == "mlp" and s2["route"] == toy_config["stage1"]["route"]
    assert s2["num_queries"] == toy_config["stage1"]["num_queries"]
    assert stage_params(toy_config, "stage2")["trainable"] == toy_config["stage2"]["trainable"]
    assert stage_params(toy_config, "stage1", "nq16")["num_queries"] == 16
    # stage 1's training leaves out what only its users read: changing how reconstructions are made
    # or refined does not train stage 1 again; reconstruct gets the whole section
    changed = {**toy_config, "stage1": {**toy_config["stage1"], "refine_steps": 7, "reconstruct_steps": 3}}
    assert stage_params(changed, "stage1", "nq16") == stage_params(toy_config, "stage1", "nq16")
    assert stage_params(changed, "reconstruct", "nq16") == {**changed["stage1"], "num_queries": 16}
    assert stage_params(toy_config, "pretrain_toy.t2i")["shapes"] == toy_config["shapes"]
    assert stage_params(toy_config, "subset") == {**toy_config["subset"], "max_bad_share": 0.01}
    # the command line prints the same, so a docstring's $(python -m vlv.config stage2) runs the stage
    assert main(["stage2", "--variant", "vlv_pairs25-mlp"]) == 0
    assert json.loads(capsys.readouterr().out) == s2


def test_explain_prints_a_keys_comment_value_and_schema(capsys):
    from vlv.config import main

    assert main(["stage1.noise_draws", "--explain"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stage1.noise_draws: 2\n") and "Timestep-and-noise draws" in out and '"minimum": 1' in out
    assert main(["launch.stage1", "--explain"]) == 0  # explained with its siblings: the section's comment
    assert "(in launch) How the training stages start" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no key 'stage1.nope'"):
        main(["stage1.nope", "--explain"])
    assert main(["pretrain_toy.lm.train.lr", "--explain"]) == 0  # a key of the pretraining overlay
    assert "AdamW (peak lr" in capsys.readouterr().out
