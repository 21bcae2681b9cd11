"""The VLV captioner of stage 2: image -> caption embeddings -> frozen CLIP text encoder -> psi -> causal LM.

``prefix(pixel_values)`` is the paper's e = psi(T(z)): the VLV encoder's N_q caption embeddings
z, through the T2I decoder's frozen CLIP text encoder T (``route="text_encoder"``, as the paper;
``route="direct"``: T's final layer norm only, matching a stage 1 trained on that route: psi reads
exactly what the UNet read), through the MLP psi into the LM's input width. The LM reads [e ; caption tokens]; the loss is the caption cross-entropy with no
loss on the prefix positions or on padding, and an end-of-sequence token after every caption, so
generation stops by itself.

What trains is one switch (``TRAINABLE``): ``mlp`` (psi only), ``mlp_llm`` (psi + LM) or
``mlp_llm_encoder`` (psi + LM + the encoder's language encoder and decoder: the paper's default,
with the queries, phi and the vision tower frozen as in the official code); the direct captioner
(no stage 1) trains ``all_but_vision`` (queries and phi too) or ``all`` (the vision tower too). The CLIP text encoder
is always frozen. The LM is fully fine-tuned or carries LoRA adapters (peft).

With a ``refiner`` (``vlv.models.refine.Refiner``, ``stage1.refine_steps`` > 0) the embeddings z
are refined on each image through the frozen T2I decoder before T reads them, in training (the
cached T(z)) and in captioning alike; the captioner then needs the images beside their pixel values.

The saved folder is self-describing: ``encoder/`` (a VLV encoder folder), ``text_encoder/``
(``CLIPTextModel``), ``llm/`` (model + tokenizer; LoRA adapters merged),
``psi.safetensors`` and ``vlv_captioner.json``; with a refiner also ``decoder/`` (the T2I pipeline)
and the refinement's settings in the JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .frozen_decoder import ROUTES, FrozenT2IDecoder, encoder_route, unet_condition
from .hub import require_local
from .refine import Refiner
from .vlv_encoder import MASTER_DTYPE, VLVEncoder

TRAINABLE = {
    "mlp": [],
    "mlp_llm": [],
    "mlp_llm_encoder": ["language_encoder", "language_decoder"],
    # the direct captioner's sets: every part of the encoder that can learn from pairs, with or
    # without the vision tower (only the frozen CLIP text encoder's final norm stays as it was)
    "all_but_vision": ["language_encoder", "language_decoder", "queries", "projection"],
    "all": ["language_encoder", "language_decoder", "queries", "projection", "vision_tower"],
}


def build_psi(d_in: int, d_lm: int) -> torch.nn.Sequential:
    """The official code's projector: Linear(d_T, d_LM) -> GELU -> Linear(d_LM, d_LM)."""
    return torch.nn.Sequential(torch.nn.Linear(d_in, d_lm), torch.nn.GELU(), torch.nn.Linear(d_lm, d_lm))


class VLVCaptioner(torch.nn.Module):
    def __init__(self, encoder: VLVEncoder, text_encoder, llm, tokenizer, route: str = "text_encoder"):
        super().__init__()
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        if text_encoder is None:
            raise ValueError("the captioner needs the T2I decoder's CLIP text encoder (both routes end in it)")
        self.encoder = encoder
        self.text_encoder = text_encoder
        self.llm = llm
        self.tokenizer = tokenizer
        self.route = route
        self.refiner: Refiner | None = None  # a plain attribute: the decoder is no part of the weights
        self.psi = build_psi(text_encoder.config.hidden_size, llm.config.hidden_size)
        if tokenizer.eos_token_id is None:
            raise ValueError("the LM's tokenizer has no end-of-sequence token; stage 2 trains the model to emit one")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def build(cls, encoder: str, t2i: str | None, llm: str, route: str, num_queries: int | None = None):
        """A fresh captioner from a VLV encoder folder (after stage 1) or, for the no-stage-1 baseline,
        a Florence-2 folder or hub id (queries and phi then start random, ``num_queries`` of them)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPTextModel

        t2i_local = Path(require_local(t2i, "text-to-image decoder (for its CLIP text encoder)"))
        text_encoder = CLIPTextModel.from_pretrained(t2i_local / "text_encoder", dtype=MASTER_DTYPE)
        if (Path(encoder) / "vlv_encoder.json").exists():
            enc = VLVEncoder.from_pretrained(encoder)
            route = encoder_route(enc, route)  # psi must read what the UNet read in stage 1
        else:
            if num_queries is None:
                raise ValueError("a Florence-2 starting point needs num_queries")
            enc = VLVEncoder.from_florence(encoder, num_queries, text_encoder.config.hidden_size, route=route)
        llm_local = require_local(llm, "caption LM")
        return cls(
            enc,
            text_encoder,
            AutoModelForCausalLM.from_pretrained(llm_local, dtype=MASTER_DTYPE),
            AutoTokenizer.from_pretrained(llm_local),
            route,
        )

    # ----------------------------------------------------------------------------- trainable set

    def set_trainable(self, trainable: str) -> None:
        """Freeze everything, then unfreeze exactly what ``trainable`` names (see ``TRAINABLE``)."""
        if trainable not in TRAINABLE:
            raise ValueError(f"unknown stage-2 trainable set {trainable!r}; choose one of {sorted(TRAINABLE)}")
        self.requires_grad_(False)
        self.encoder.set_trainable(TRAINABLE[trainable])
        self.psi.requires_grad_(True)
        if trainable != "mlp":
            if _has_lora(self.llm):
                for n, p in self.llm.named_parameters():
                    p.requires_grad_("lora_" in n)
            else:
                self.llm.requires_grad_(True)

    def add_lora(self, r: int, alpha: int, dropout: float = 0.0) -> None:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear")
        self.llm = get_peft_model(self.llm, cfg)

    # ----------------------------------------------------------------------------- forward

    def refine_with(self, decoder: FrozenT2IDecoder, steps: int, lr: float, draws: int, seed: int) -> None:
        """Refine the embeddings on each image from now on (see ``vlv.models.refine``)."""
        if decoder.route != self.route:
            raise ValueError(f"the decoder conditions along {decoder.route!r}, the captioner along {self.route!r}")
        self.refiner = Refiner(decoder, steps, lr, draws, seed)

    def caption_input(self, pixel_values: torch.Tensor, images=None) -> torch.Tensor:
        """T(z): what psi reads, the UNet's conditioning from the caption embeddings along the route;
        with a refiner, z is first refined on ``images`` (the images of ``pixel_values``, uint8 HxWx3
        each: see ``Refiner.refine_images``)."""
        z = self.encoder(pixel_values)
        if self.refiner is not None:
            if images is None:
                raise ValueError("this captioner refines its embeddings on each image: pass the images too")
            z = self.refiner(images, z)
        return unet_condition(self.text_encoder, z, self.route)

    def prefix(self, pixel_values=None, caption_input=None, images=None) -> torch.Tensor:
        h = self.caption_input(pixel_values, images) if caption_input is None else caption_input
        return self.psi(h.to(self.psi[0].weight.dtype))

    def tokenize(self, captions: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
        """Right-padded caption ids with EOS appended (the EOS counts within ``max_tokens``)."""
        eos = self.tokenizer.eos_token_id
        seqs = [self.tokenizer(c, add_special_tokens=False).input_ids[: max_tokens - 1] + [eos] for c in captions]
        return self.pad(seqs)

    def pad(self, seqs) -> dict[str, torch.Tensor]:
        """Right-pad token sequences into input_ids and attention_mask."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.as_tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def inputs_and_labels(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """[prefix ; token embeddings], its attention mask, and labels (-100 on prefix and padding)."""
        b, n = prefix.shape[:2]
        tok = self.llm.get_input_embeddings()(input_ids)
        embeds = torch.cat([prefix.to(tok.dtype), tok], dim=1)
        mask = torch.cat(
            [torch.ones((b, n), dtype=attention_mask.dtype, device=attention_mask.device), attention_mask], 1
        )
        labels = torch.cat(
            [
                torch.full((b, n), -100, dtype=torch.long, device=input_ids.device),
                input_ids.masked_fill(attention_mask == 0, -100),
            ],
            dim=1,
        )
        return embeds, mask, labels

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        caption_input: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | None = None,
        images=None,
    ) -> torch.Tensor:
        """The caption loss from images (or from cached T(z) when the encoder is frozen): the mean over
        this batch's caption tokens, or their sum over ``num_items_in_batch`` when given (several
        processes: each divides by its share of the global batch's tokens, so that DDP's average of
        the processes is the global batch's token mean)."""
        prefix = self.prefix(pixel_values, caption_input, images)
        embeds, mask, labels = self.inputs_and_labels(prefix, input_ids, attention_mask)
        extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        return self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, **extra).loss

    @torch.no_grad()
    def generate(
        self, pixel_values: torch.Tensor, num_beams: int = 4, max_new_tokens: int = 128, images=None
    ) -> list[str]:
        """Captions for a batch of images: beam search from the prefix alone, stopping at EOS
        (``images``: the batch's images, needed with a refiner)."""
        prefix = self.prefix(pixel_values, images=images)
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        out = self.llm.generate(
            inputs_embeds=prefix.to(self.llm.get_input_embeddings().weight.dtype),
            attention_mask=mask,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            early_stopping=True,
            do_sample=False,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    # ----------------------------------------------------------------------------- save / load

    def save_pretrained(self, out: str | os.PathLike) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(out / "encoder")
        self.text_encoder.save_pretrained(out / "text_encoder")
        llm = self.llm.merge_and_unload() if _has_lora(self.llm) else self.llm
        llm.save_pretrained(out / "llm")
        self.tokenizer.save_pretrained(out / "llm")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.psi.state_dict().items()}, out / "psi.safetensors")
        about = {"class": "VLVCaptioner", "route": self.route, "prefix_tokens": self.encoder.config["num_queries"]}
        if self.refiner is not None:
            self.refiner.dec.pipe.save_pretrained(out / "decoder")
            about["refine"] = self.refiner.settings()
        (out / "vlv_captioner.json").write_text(json.dumps(about, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> VLVCaptioner:
        from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPTextModel

        path = Path(path)
        if not (path / "vlv_captioner.json").exists():
            raise FileNotFoundError(
                f"{path} is not a VLV captioner folder (no vlv_captioner.json); train one with the finetune_stage2 rule"
            )
        cfg = json.loads((path / "vlv_captioner.json").read_text())
        cap = cls(
            VLVEncoder.from_pretrained(path / "encoder"),
            CLIPTextModel.from_pretrained(path / "text_encoder", dtype=MASTER_DTYPE),
            AutoModelForCausalLM.from_pretrained(path / "llm", dtype=dtype),
            AutoTokenizer.from_pretrained(path / "llm"),
            cfg["route"],
        )
        cap.psi.load_state_dict(load_file(str(path / "psi.safetensors")))
        if "refine" in cfg:
            cap.refine_with(FrozenT2IDecoder(str(path / "decoder"), cfg["route"]), **cfg["refine"])
        return cap.eval()


def _has_lora(model) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")
