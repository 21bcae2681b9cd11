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


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    from vlv.training import Checkpointer

    ckpt = Checkpointer(tmp_path, fingerprint="f")
    ckpt.save(2, {"x": torch.full((3,), 2.0)})
    newest = ckpt.save(4, {"x": torch.full((3,), 4.0)})
    newest.write_bytes(newest.read_bytes()[:100])  # a copy cut short
    state = Checkpointer(tmp_path, fingerprint="f").load_latest()
    assert state["step"] == 2 and torch.equal(state["x"], torch.full((3,), 2.0))
    assert "cannot be read" in caplog.text and newest.with_suffix(".corrupt").exists() and not newest.exists()
    (tmp_path / "step-00000002.pt").write_bytes(b"")  # and none readable at all: start over
    assert Checkpointer(tmp_path, fingerprint="f").load_latest() is None
    Checkpointer(tmp_path).clear()
    assert not tmp_path.exists()  # the set-aside files go with the rest


def test_checkpoints_are_synced_before_their_name_appears_and_refuse_other_data(tmp_path, monkeypatch):
    import os

    from vlv.training import Checkpointer

    events = []
    real_fsync, real_replace = os.fsync, type(tmp_path).replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(type(tmp_path), "replace", lambda self, t: events.append("rename") or real_replace(self, t))
    Checkpointer(tmp_path, fingerprint="f", data="pool-a").save(3, {"x": torch.zeros(1)})
    assert events[:2] == ["fsync", "rename"]  # the file's bytes, then its name (then the folder's entry)
    with pytest.raises(SystemExit, match=f"other training data.*delete {tmp_path}"):
        Checkpointer(tmp_path, fingerprint="f", data="pool-b").load_latest()
    assert Checkpointer(tmp_path, fingerprint="f", data="pool-a").load_latest()["step"] == 3  # kept
    older = torch.load(tmp_path / "step-00000003.pt", weights_only=True)  # as saved before data was recorded
    del older["data"]
    torch.save(older, tmp_path / "step-00000003.pt")
    assert Checkpointer(tmp_path, fingerprint="f", data="pool-b").load_latest()["step"] == 3  # (with a warning)


def test_checkpoints_carry_every_random_generator(tmp_path):
    import io
    import random

    import numpy as np

    from vlv.training import rng_state, set_rng_state

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.gauss(0, 1), np.random.randn()  # with a Gauss draw kept by each
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    draws = lambda: (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), float(torch.rand(1)))  # noqa: E731
    before = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True))
    assert draws() == before
