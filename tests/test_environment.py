import importlib.util

import pytest
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


def test_the_tests_and_what_they_start_cannot_reach_beyond_this_machine():
    """tests/offline/sitecustomize.py, in this process and in a child Python (as Snakemake's jobs are):
    a connection beyond loopback is refused by name, so 'offline' is checked, not assumed."""
    import socket
    import subprocess
    import sys

    with pytest.raises(OSError, match="the tests run offline") as refused:
        socket.create_connection(("192.0.2.1", 80), timeout=2)  # (TEST-NET: unroutable anyway)
    assert type(refused.value).__name__ == "NetworkBlocked"
    with pytest.raises(OSError, match="the tests run offline"):
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).connect_ex(("2001:db8::1", 443, 0, 0))
    child = "import socket; socket.create_connection(('192.0.2.1', 443), timeout=2)"
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert done.returncode != 0 and "the tests run offline" in done.stderr
    with socket.socket() as server:  # loopback stays open
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=2).close()
