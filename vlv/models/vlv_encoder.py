"""The VLV encoder: image -> N_q continuous caption embeddings in the CLIP text-embedding space.

Florence-2 (native ``Florence2ForConditionalGeneration``): its DaViT vision tower and projector
turn the image into visual tokens, which replace the image placeholders of the task prompt; its
BART language encoder reads the merged sequence; its BART decoder reads N_q learnable query
embeddings (instead of token embeddings) with cross-attention to the encoder; the MLP phi maps the
decoder states to the frozen CLIP text encoder's width. The saved folder is self-describing:
``florence2/`` (model + processor, ``save_pretrained``), ``vlv_encoder.json`` (sizes, prompt and the
route to the UNet stage 1 trained it on) and ``vlv_head.safetensors`` (queries and phi).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .hub import require_local

PARTS = ("vision_tower", "language_encoder", "language_decoder", "queries", "projection")
DEFAULT_PROMPT = "<MORE_DETAILED_CAPTION>"
# Weights load in float32 whatever dtype a checkpoint was saved in (transformers 5 keeps the saved
# dtype by default, and hub checkpoints are often fp16/bf16): AdamW on half-precision weights loses
# updates below their resolution. bf16 is compute only (autocast), never storage of what trains.
MASTER_DTYPE = torch.float32


def pixel_values(image_processor, images) -> torch.Tensor:
    """PIL images or uint8 HxWx3 arrays -> the Florence-2 processor's pixel_values (per image: a batch
    gives each image the values it gets alone)."""
    return image_processor(images=list(images), return_tensors="pt")["pixel_values"]


class VLVEncoder(torch.nn.Module):
    def __init__(
        self,
        florence,
        processor,
        num_queries: int,
        clip_dim: int,
        prompt: str = DEFAULT_PROMPT,
        route: str | None = None,
    ):
        """``route``: how stage 1 sends these embeddings to the UNet (``frozen_decoder.ROUTES``), recorded
        in the saved folder so that whoever decodes them takes the same route; None: not known."""
        super().__init__()
        self.florence = florence
        self.processor = processor
        self.prompt = prompt
        d = florence.config.text_config.d_model
        self.queries = torch.nn.Parameter(torch.randn(1, num_queries, d))
        self.projection = torch.nn.Sequential(
            torch.nn.Linear(d, clip_dim), torch.nn.GELU(), torch.nn.Linear(clip_dim, clip_dim)
        )
        self.config = {"num_queries": num_queries, "clip_dim": clip_dim, "prompt": prompt, "d_model": d, "route": route}
        # The prompt's token ids (image placeholders included) are the same for every image.
        ids = processor(text=[prompt], images=[_blank(processor)], return_tensors="pt")["input_ids"]
        self.register_buffer("prompt_ids", ids, persistent=False)

    @classmethod
    def from_florence(
        cls, path: str, num_queries: int, clip_dim: int, prompt: str = DEFAULT_PROMPT, route: str | None = None
    ) -> VLVEncoder:
        """A fresh encoder around a pretrained Florence-2 folder or hub id (queries and phi random)."""
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        local = require_local(path, "Florence-2 vision encoder")
        return cls(
            Florence2ForConditionalGeneration.from_pretrained(local, dtype=MASTER_DTYPE),
            AutoProcessor.from_pretrained(local),
            num_queries,
            clip_dim,
            prompt,
            route,
        )

    # ----------------------------------------------------------------------------- structure

    def part_parameters(self, part: str) -> list[torch.nn.Parameter]:
        m = self.florence.model
        if part == "vision_tower":
            return list(m.vision_tower.parameters()) + list(m.multi_modal_projector.parameters())
        if part == "language_encoder":  # the shared token embeddings feed the prompt into it
            return list(m.language_model.encoder.parameters()) + list(m.language_model.shared.parameters())
        if part == "language_decoder":
            shared = {id(p) for p in m.language_model.shared.parameters()}
            return [p for p in m.language_model.decoder.parameters() if id(p) not in shared]
        if part == "queries":
            return [self.queries]
        if part == "projection":
            return list(self.projection.parameters())
        raise ValueError(f"unknown part {part!r}; parts are {PARTS}")

    def set_trainable(self, parts: list[str]) -> None:
        """Freeze everything, then unfreeze exactly the named parts (the LM head is never used)."""
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown trainable part(s) {sorted(unknown)}; parts are {PARTS}")
        self.requires_grad_(False)
        for part in parts:
            for p in self.part_parameters(part):
                p.requires_grad_(True)

    # ----------------------------------------------------------------------------- forward

    def preprocess(self, images) -> torch.Tensor:
        """PIL images or uint8 HxWx3 arrays -> the processor's pixel_values."""
        return pixel_values(self.processor.image_processor, images)

    def preprocessor(self):
        """``preprocess`` without the model (what a data-loader worker needs)."""
        return functools.partial(pixel_values, self.processor.image_processor)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vision tower and projector: B x visual tokens x d_model. Frozen and without
        augmentation, this is a pure function of the image (stage 1 can cache it)."""
        feats = self.florence.model.get_image_features(pixel_values=pixel_values.to(self.queries.dtype))
        return getattr(feats, "pooler_output", feats)

    def forward(self, pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None):
        """Caption embeddings (B x N_q x d_CLIP) from pixel_values, or from precomputed
        ``image_features`` (the same computation after the vision tower)."""
        if (pixel_values is None) == (image_features is None):
            raise ValueError("give pixel_values or image_features, not both")
        m = self.florence.model
        feats = self.image_features(pixel_values) if image_features is None else image_features
        b = feats.shape[0]
        ids = self.prompt_ids.expand(b, -1)
        embeds = m.get_input_embeddings()(ids)
        mask = m.get_placeholder_mask(ids, inputs_embeds=embeds, image_features=feats)
        embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
        attn = torch.ones(ids.shape, dtype=torch.long, device=ids.device)
        enc = m.language_model.encoder(inputs_embeds=embeds, attention_mask=attn).last_hidden_state
        q = self.queries.expand(b, -1, -1)
        dec = m.language_model.decoder(
            inputs_embeds=q, encoder_hidden_states=enc, encoder_attention_mask=attn
        ).last_hidden_state
        return self.projection(dec)

    # ----------------------------------------------------------------------------- save / load

    def save_pretrained(self, out: str | os.PathLike) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.florence.save_pretrained(out / "florence2")
        self.processor.save_pretrained(out / "florence2")
        save_file(
            {
                "queries": self.queries.detach().cpu().contiguous(),
                **{f"projection.{k}": v.detach().cpu().contiguous() for k, v in self.projection.state_dict().items()},
            },
            out / "vlv_head.safetensors",
        )
        (out / "vlv_encoder.json").write_text(json.dumps({"class": "VLVEncoder", **self.config}, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> VLVEncoder:
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        path = Path(path)
        if not (path / "vlv_encoder.json").exists():
            raise FileNotFoundError(
                f"{path} is not a VLV encoder folder (no vlv_encoder.json); train one with the distill_stage1 rule"
            )
        cfg = json.loads((path / "vlv_encoder.json").read_text())
        enc = cls(
            Florence2ForConditionalGeneration.from_pretrained(path / "florence2", dtype=MASTER_DTYPE),
            AutoProcessor.from_pretrained(path / "florence2"),
            cfg["num_queries"],
            cfg["clip_dim"],
            cfg["prompt"],
            cfg.get("route"),  # folders saved before the route was recorded have none
        )
        head = load_file(str(path / "vlv_head.safetensors"))
        with torch.no_grad():
            enc.queries.copy_(head.pop("queries"))
            enc.projection.load_state_dict({k.removeprefix("projection."): v for k, v in head.items()})
        return enc.eval()


def _blank(processor):
    import numpy as np

    size = processor.image_processor.size
    h = size.get("height", 32) if isinstance(size, dict) else 32
    w = size.get("width", 32) if isinstance(size, dict) else 32
    return np.zeros((h, w, 3), np.uint8)
