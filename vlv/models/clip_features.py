"""CLIP image and text embeddings from a ``CLIPModel`` folder (toy stand-in or a hub id in the cache).

Used for subset scoring, CLIPScore / RefCLIPScore and, in the toy profile, as the feature space of
the caption -> image Fréchet distance (reported as FD-toyCLIP, never as FID).
"""

from __future__ import annotations

import numpy as np
import torch

from .hub import require_local


class ClipFeatures(torch.nn.Module):
    """``images(uint8 NxHxWx3)`` and ``texts(list[str])``: projected CLIP embeddings (not normalised).

    As a module, ``forward`` takes uint8 NCHW tensors (the interface of torchmetrics' Fréchet
    distance with a custom feature extractor) and returns image embeddings.
    """

    def __init__(self, path: str, device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import AutoProcessor, CLIPModel

        local = require_local(path, "CLIP model")
        self.model = CLIPModel.from_pretrained(local).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(local)
        self.device = torch.device(device)
        self.num_features = self.model.config.projection_dim
        self.max_length = self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def images(self, images, batch: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch):
            px = self.processor(images=list(images[i : i + batch]), return_tensors="pt")["pixel_values"]
            f = self.model.get_image_features(pixel_values=px.to(self.device))
            out.append(getattr(f, "pooler_output", f).float().cpu())
        return torch.cat(out) if out else torch.zeros((0, self.num_features))

    @torch.no_grad()
    def texts(self, texts: list[str], batch: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch):
            tok = self.processor(
                text=texts[i : i + batch],
                return_tensors="pt",
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
            )
            f = self.model.get_text_features(
                input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
            )
            out.append(getattr(f, "pooler_output", f).float().cpu())
        return torch.cat(out) if out else torch.zeros((0, self.num_features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        arr = images.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
        return self.images(arr).double()
