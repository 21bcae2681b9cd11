"""Inception-v3 pool features for the standard FID (paper profile), with torch alone.

The network is TensorFlow's ``inception-2015-12-05`` graph, the one the original FID (TTUR) and
every FID implementation since reproduce, as NVIDIA's TorchScript export (``INCEPTION_URL``; what
clean-fid's and StyleGAN's FID load). It carries its own graph, so it needs no torchvision, which
this project cannot install beside torch 2.13 (torch-fidelity and pytorch-fid both import it for
their Inception module). It takes uint8-valued NCHW images of any size, resizes them to 299 x 299
inside, as TensorFlow did, and with ``return_features=True`` returns the 2048 pool features.

Loading executes no pickled Python: a TorchScript archive holds tensors and TorchScript code, run by
TorchScript's own interpreter. The download rule checks its SHA-256 (``data.files``), and loading
checks it again where the digest is given (a file replaced or damaged since is refused).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


class InceptionFeatures(torch.nn.Module):
    """``forward(uint8 NCHW)`` -> float64 N x 2048 on the CPU (torchmetrics' Fréchet distance keeps
    its sums there), computed on ``device`` ``batch`` images at a time."""

    description = "Inception-v3 pool features (TF 2015-12-05 weights, NVIDIA's TorchScript)"

    def __init__(
        self, path: str | os.PathLike, device: str | torch.device = "cpu", batch: int = 64, sha256: str | None = None
    ):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise SystemExit(
                f"FID needs the Inception-v3 TorchScript file at {path}: rule download fetches it from "
                f"{INCEPTION_URL} (config data.files), or put it there yourself"
            )
        if sha256 is not None:  # the pinned digest: what is loaded is what was checked at download
            with path.open("rb") as f:
                found = hashlib.file_digest(f, "sha256").hexdigest()
            if found != sha256.lower():
                raise SystemExit(
                    f"the Inception-v3 file {path} has SHA-256 {found}, not the pinned {sha256}: it changed since "
                    "it was downloaded; delete it and rerun (rule download fetches it again)"
                )
        with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; loading still works
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(path), map_location=device).eval()
        self.device = torch.device(device)
        self.batch = batch

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(images), self.batch):
            x = images[i : i + self.batch].to(self.device, torch.float32)  # values 0..255, as the graph expects
            out.append(self.net(x, return_features=True).double().cpu())
        return torch.cat(out)
