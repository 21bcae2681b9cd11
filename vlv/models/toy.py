"""Tiny stand-ins of the paper's models, built from config, of the same classes the paper loads.

- a CLIP-style BPE tokenizer (``CLIPTokenizer``) and a byte-level BPE tokenizer for the LM, both
  trained offline on Shapes text in milliseconds;
- the T2I pipeline parts (``CLIPTextModel``, ``UNet2DConditionModel``, a pixel-space autoencoder,
  a DDIM scheduler with v-prediction) that ``StableDiffusionPipeline`` assembles;
- ``CLIPModel``, ``Qwen2ForCausalLM`` and ``Florence2ForConditionalGeneration`` with its processor.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import regex
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from ..shapes.captions import reference_captions, teacher_caption
from ..shapes.world import WorldSpec, sample_scenes

CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def shapes_corpus(spec: WorldSpec, n_scenes: int = 1500, seed: int = 0) -> list[str]:
    """Every kind of sentence the Shapes world writes, for training tokenizers."""
    out = []
    for s in sample_scenes(spec, seed, n_scenes):
        out.extend(reference_captions(s, seed, n=3))
        out.append(teacher_caption(s, spec))
    return out


def _byte_to_unicode() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def learn_bpe_merges(words: Counter, n_merges: int) -> list[tuple[str, str]]:
    """Plain BPE over a word-frequency table, ties broken by the pair's text.

    ``tokenizers``' BpeTrainer numbers its alphabet in hash order, so its ids and tie-breaks change
    from run to run; a tokenizer that changes between runs would break "same seed, same bytes".
    The Shapes vocabulary is a few dozen words, so this loop takes milliseconds.
    """
    seqs = {w: list(w) for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, syms in seqs.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, syms in seqs.items():
            i, out = 0, []
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            seqs[w] = out
    return merges


def _bpe_files(
    d: Path, corpus: list[str], vocab_size: int, specials: list[str], eow: str, lowercase: bool, pattern: str
) -> None:
    """Write vocab.json and merges.txt of a byte-level BPE learnt deterministically on ``corpus``."""
    to_unicode = _byte_to_unicode()
    words: Counter = Counter()
    for line in corpus:
        text = line.lower() if lowercase else line
        for w in regex.findall(pattern, text):
            u = "".join(to_unicode[b] for b in w.encode("utf-8"))
            words[tuple(u[:-1]) + (u[-1] + eow,) if eow else tuple(u)] += 1
    alphabet = sorted(to_unicode.values())
    base = alphabet + ([a + eow for a in alphabet] if eow else [])
    merges = learn_bpe_merges(Counter({k: v for k, v in words.items()}), max(0, vocab_size - len(base) - len(specials)))
    vocab = {t: i for i, t in enumerate(base)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for sp in specials:
        vocab.setdefault(sp, len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


# GPT-2 / Qwen style pre-tokenisation (spaces stay attached to the following word).
BYTE_LEVEL_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def train_clip_tokenizer(corpus: list[str], vocab_size: int, model_max_length: int = 77):
    """A ``CLIPTokenizer`` (lower-casing, end-of-word BPE) whose vocabulary is learnt on ``corpus``."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as d:
        _bpe_files(Path(d), corpus, vocab_size, CLIP_SPECIALS, "</w>", True, CLIP_SPLIT)
        return CLIPTokenizer.from_pretrained(d, model_max_length=model_max_length)


def _byte_level_tokenizer(d: Path, specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return tok


def train_lm_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (Qwen-style: no BOS, ``<|endoftext|>`` as EOS and pad)."""
    from transformers import PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory() as d:
        _bpe_files(Path(d), corpus, vocab_size, ["<|endoftext|>"], "", False, BYTE_LEVEL_SPLIT)
        tok = _byte_level_tokenizer(Path(d), ["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def train_bart_tokenizer(corpus: list[str], vocab_size: int, image_token: str = "<image>"):
    """The Florence-2 (BART) tokenizer stand-in, with Florence's image placeholder token."""
    from transformers import AutoTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", image_token]
    with tempfile.TemporaryDirectory() as d:
        _bpe_files(Path(d), corpus, vocab_size, specials, "", False, BYTE_LEVEL_SPLIT)
        Path(d, "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "BartTokenizer",
                    "bos_token": "<s>",
                    "eos_token": "</s>",
                    "pad_token": "<pad>",
                    "unk_token": "<unk>",
                    "extra_special_tokens": {"image_token": image_token},
                }
            )
        )
        return AutoTokenizer.from_pretrained(d)


# --------------------------------------------------------------------------- T2I pipeline parts


def build_text_encoder(cfg: dict, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["layers"],
            num_attention_heads=cfg["heads"],
            max_position_embeddings=cfg["max_length"],
            hidden_act=cfg.get("hidden_act", "quick_gelu"),
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            projection_dim=cfg["hidden_size"],
        )
    )


def build_unet(cfg: dict, latent_channels: int, latent_size: int, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    n = len(cfg["block_out_channels"])
    down = ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1)
    up = ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"]
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=tuple(cfg["block_out_channels"]),
        layers_per_block=cfg["layers_per_block"],
        attention_head_dim=cfg["heads"],
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=cfg["norm_groups"],
        use_linear_projection=True,
    )


def build_scheduler(cfg: dict):
    """The sampler saved with the pipeline; training uses the same noise schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule=cfg["beta_schedule"],
        prediction_type=cfg["prediction_type"],
        clip_sample=True,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )


# --------------------------------------------------------------------------- CLIP, LM, Florence-2


def build_clip(cfg: dict, vocab_size: int, image_size: int, bos_id: int, eos_id: int, pad_id: int):
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=vocab_size,
        hidden_size=cfg["text_hidden_size"],
        intermediate_size=2 * cfg["text_hidden_size"],
        num_hidden_layers=cfg["text_layers"],
        num_attention_heads=cfg["heads"],
        max_position_embeddings=cfg["max_length"],
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    vision = dict(
        hidden_size=cfg["vision_hidden_size"],
        intermediate_size=2 * cfg["vision_hidden_size"],
        num_hidden_layers=cfg["vision_layers"],
        num_attention_heads=cfg["heads"],
        image_size=image_size,
        patch_size=cfg["patch_size"],
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg["projection_dim"]))


def clip_image_processor(image_size: int):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def build_qwen2(cfg: dict, vocab_size: int, eos_id: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["layers"],
            num_attention_heads=cfg["heads"],
            num_key_value_heads=cfg["kv_heads"],
            max_position_embeddings=cfg["max_length"],
            tie_word_embeddings=True,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
    )


def florence2_image_tokens(cfg: dict, image_size: int) -> int:
    """Visual tokens of the DaViT tower: one per cell of the last stage's grid, plus one pooled."""
    side = image_size
    for stride in cfg["patch_stride"]:
        side = (side + stride - 1) // stride
    return side * side + 1


def build_florence2(cfg: dict, vocab_size: int, image_token_id: int, image_size: int, special_ids: dict):
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    v = cfg["vision"]
    t = cfg["text"]
    n_stages = len(v["embed_dim"])
    vision = dict(
        depths=v["depths"] if "depths" in v else [v["depth"]] * n_stages,
        patch_size=v["patch_size"],
        patch_stride=v["patch_stride"],
        patch_padding=v["patch_padding"],
        patch_prenorm=[False] + [True] * (n_stages - 1),
        embed_dim=v["embed_dim"],
        num_heads=v["heads"],
        num_groups=v.get("groups", v["heads"]),
        window_size=v["window_size"],
        projection_dim=t["d_model"],
        max_position_embeddings=64,
        max_temporal_embeddings=4,
        drop_path_rate=0.0,
    )
    text = dict(
        model_type="bart",
        vocab_size=vocab_size,
        d_model=t["d_model"],
        encoder_layers=t["layers"],
        decoder_layers=t["layers"],
        encoder_attention_heads=t["heads"],
        decoder_attention_heads=t["heads"],
        encoder_ffn_dim=t.get("ffn_dim", 2 * t["d_model"]),
        decoder_ffn_dim=t.get("ffn_dim", 2 * t["d_model"]),
        max_position_embeddings=t["max_length"],
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        **special_ids,
    )
    return Florence2ForConditionalGeneration(
        Florence2Config(vision_config=vision, text_config=text, image_token_id=image_token_id)
    )


def florence2_processor(tokenizer, image_size: int, num_image_tokens: int):
    from transformers import Florence2Processor

    ip = clip_image_processor(image_size)
    ip.image_seq_length = num_image_tokens
    return Florence2Processor(image_processor=ip, tokenizer=tokenizer)


def images_to_tensor(images: np.ndarray):
    """uint8 NxHxWx3 -> float Nx3xHxW in [-1, 1] (the diffusion models' pixel range)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
