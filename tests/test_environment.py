import importlib.util

import torch


def test_torchvision_and_timm_are_absent():
    # torchvision from PyPI does not import beside the CPU torch 2.13.0 wheel and breaks
    # transformers' image processors; timm pulls torchvision in (README, Environment).
    assert importlib.util.find_spec("torchvision") is None
    assert importlib.util.find_spec("timm") is None


def test_torch_is_the_pinned_release():
    assert torch.__version__.split("+")[0] == "2.13.0"


def test_requirements_pin_torch_and_keep_torchvision_out(root):
    lines = [ln.split("#")[0].strip() for ln in (root / "requirements.txt").read_text().splitlines()]
    pins = [ln for ln in lines if ln]
    assert "torch==2.13.0" in pins
    assert not any(ln.startswith(("torchvision", "timm")) for ln in pins)
    env = (root / "environment.yml").read_text()
    assert "-r requirements.txt" in env
