import json

import pytest
import torch
from safetensors.torch import load_file

from vlv.toy import pretrain_toy_lm, pretrain_toy_t2i
from vlv.training import LossLog


def _params(micro_config, name, **train):
    sec = micro_config["pretrain_toy"][name]
    return json.dumps({"shapes": micro_config["shapes"], "model": sec["model"], "train": {**sec["train"], **train}})


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_killed_and_resumed_run_ends_with_the_same_weights(micro_config, tmp_path, monkeypatch):
    params = _params(micro_config, "lm", steps=5, checkpoint_every=2)
    assert (
        pretrain_toy_lm.main(["--params", params, "--out", str(tmp_path / "ref"), "--work", str(tmp_path / "w_ref")])
        == 0
    )

    real_append = LossLog.append

    def dies_at_step_4(self, step, *a):
        if step == 4:
            raise KeyboardInterrupt("simulated kill")
        return real_append(self, step, *a)

    monkeypatch.setattr(LossLog, "append", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        pretrain_toy_lm.main(["--params", params, "--out", str(tmp_path / "run"), "--work", str(tmp_path / "w_run")])
    assert sorted(p.name for p in (tmp_path / "w_run").iterdir()) == ["step-00000002.pt"]
    monkeypatch.setattr(LossLog, "append", real_append)
    assert (
        pretrain_toy_lm.main(["--params", params, "--out", str(tmp_path / "run"), "--work", str(tmp_path / "w_run")])
        == 0
    )

    ref, run = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
    assert ref.keys() == run.keys()
    assert all(torch.equal(ref[k], run[k]) for k in ref)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["resumed_from_step"] == 2
    steps = [int(line.split(",")[0]) for line in (tmp_path / "run" / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5]
    assert not (tmp_path / "w_run").exists()  # checkpoints are dropped once the folder is complete


def test_t2i_training_changes_weights_and_saves_a_pipeline(micro_config, tmp_path):
    params = _params(micro_config, "t2i", steps=2)
    assert (
        pretrain_toy_t2i.main(["--params", params, "--out", str(tmp_path / "t2i"), "--work", str(tmp_path / "w")]) == 0
    )
    index = json.loads((tmp_path / "t2i" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["vae"] == ["vlv.models.pixel_autoencoder", "PixelUnshuffleAutoencoder"]
    assert (tmp_path / "t2i" / "loss.png").stat().st_size > 0


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path):
    from vlv.training import Checkpointer, fingerprint

    old = Checkpointer(tmp_path, fingerprint=fingerprint({"lr": 0.1}))
    old.save(5, {"x": torch.zeros(1)})
    assert Checkpointer(tmp_path, fingerprint=fingerprint({"lr": 0.1})).load_latest()["step"] == 5
    assert Checkpointer(tmp_path, fingerprint=fingerprint({"lr": 0.2})).load_latest() is None
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # discarded, not kept to confuse a later run
