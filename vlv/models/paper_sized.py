"""Random-weight model folders of the paper profile's classes, at paper size or tiny.

``build_tiny_llava(lm_folder, out)`` writes a tiny random ``LlavaForConditionalGeneration`` (the
chat-VLM class path of the teacher and the open captioners); ``build_tiny_sd3(tokenizer, out)`` a tiny
random ``StableDiffusion3Pipeline`` (the evaluation renderer's class path, SD-3.5).

``build_stage1_stack(out, preset)`` writes ``out/florence`` (``Florence2ForConditionalGeneration``
+ processor) and ``out/sd`` (a ``StableDiffusionPipeline`` folder: CLIP text encoder, SD-2-style
UNet with linear projections and four blocks, KL VAE, DDIM scheduler) and returns their paths and
the training image side. ``paper``: the published configurations of Florence-2-large (DaViT
256-512-1024-2048, BART-large 12+12 layers, d_model 1024), the OpenCLIP-H text tower of SD 2.x
(1024 wide, 23 layers) and the SD-2.1 UNet (320-640-1280-1280, head dims 5/10/20/20, cross-attention
1024) and VAE, at 384 px: what the stage-1 speed benchmark needs on a GPU when no weights can be
downloaded (speed does not depend on the weights). ``tiny``: the same classes at a few thousand
parameters, for tests on the CPU.

``build_stage2_stack(out, preset)`` adds what stage 2 trains: ``out/encoder`` (a VLV encoder folder
around that Florence-2, queries and phi random) and ``out/llm`` (``Qwen2ForCausalLM``: Qwen2.5-3B's
published configuration at ``paper``, built on the GPU when there is one). Tokenizers are the toy ones trained on Shapes text (the
vocabulary is smaller than the real ones; it changes only the embedding tables).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

PRESETS = {
    "tiny": {
        "image_size": 32,
        "florence_image_size": 32,
        "florence": {
            "vision": {
                "embed_dim": [8, 16],
                "heads": [1, 2],
                "depth": 1,
                "patch_size": [7, 3],
                "patch_stride": [4, 2],
                "patch_padding": [3, 1],
                "window_size": 4,
            },
            "text": {"d_model": 16, "layers": 1, "heads": 2, "max_length": 256},
        },
        "text_encoder": {"hidden_size": 32, "intermediate_size": 37, "layers": 2, "heads": 4},
        "unet": {"block_out_channels": (8, 16, 16, 16), "head_dims": (2, 2, 2, 2), "layers": 1, "groups": 4},
        "vae": {"block_out_channels": (8, 16), "layers": 1, "groups": 4},
        "llm": {"hidden_size": 32, "intermediate_size": 64, "layers": 2, "heads": 4, "kv_heads": 2, "vocab_size": None},
    },
    "paper": {
        "image_size": 384,
        # the Florence-2 processor resizes to 768 px (its pretrained resolution)
        "florence_image_size": 768,
        "florence": {
            "vision": {
                "embed_dim": [256, 512, 1024, 2048],
                "heads": [8, 16, 32, 64],
                "depths": [1, 1, 9, 1],
                "patch_size": [7, 3, 3, 3],
                "patch_stride": [4, 2, 2, 2],
                "patch_padding": [3, 1, 1, 1],
                "window_size": 12,
            },
            "text": {"d_model": 1024, "layers": 12, "heads": 16, "ffn_dim": 4096, "max_length": 1024},
        },
        "text_encoder": {"hidden_size": 1024, "intermediate_size": 4096, "layers": 23, "heads": 16},
        "unet": {"block_out_channels": (320, 640, 1280, 1280), "head_dims": (5, 10, 20, 20), "layers": 2, "groups": 32},
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers": 2, "groups": 32},
        # Qwen2.5-3B (its published config.json); the full vocabulary, so the LM head costs what it does
        "llm": {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "layers": 36,
            "heads": 16,
            "kv_heads": 2,
            "vocab_size": 151936,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 32768,
        },
    },
}


def build_unet(preset: str, cross_attention_dim: int):
    """The SD-2-style UNet: four blocks (three with cross-attention), linear projections."""
    from diffusers import UNet2DConditionModel

    p = PRESETS[preset]
    u = p["unet"]
    latent = p["image_size"] // 2 ** (len(p["vae"]["block_out_channels"]) - 1)
    return UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        block_out_channels=u["block_out_channels"],
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=u["layers"],
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=u["head_dims"],
        use_linear_projection=True,
        norm_num_groups=u["groups"],
    )


def build_vae(preset: str):
    from diffusers import AutoencoderKL

    p = PRESETS[preset]
    v = p["vae"]
    n = len(v["block_out_channels"])
    return AutoencoderKL(
        block_out_channels=v["block_out_channels"],
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=v["layers"],
        latent_channels=4,
        norm_num_groups=v["groups"],
        sample_size=p["image_size"],
        scaling_factor=0.18215,
    )


def build_text_encoder(preset: str, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """The CLIP text tower (OpenCLIP-H's uses GELU), through the toy builder."""
    from .toy import build_text_encoder as build

    return build(
        {**PRESETS[preset]["text_encoder"], "max_length": 77, "hidden_act": "gelu"}, vocab_size, bos_id, eos_id, pad_id
    )


def build_stage1_stack(out: str | Path, preset: str = "tiny", seed: int = 0) -> tuple[Path, Path, int]:
    """(Florence-2 folder, SD pipeline folder, training image side) of random weights."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from ..shapes.world import WorldSpec
    from .toy import (
        build_florence2,
        florence2_image_tokens,
        florence2_processor,
        shapes_corpus,
        train_bart_tokenizer,
        train_clip_tokenizer,
    )

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    out = Path(out)
    torch.manual_seed(seed)
    corpus = shapes_corpus(WorldSpec(), n_scenes=50)
    tok = train_clip_tokenizer(corpus, 600)
    te = build_text_encoder(preset, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    sd = out / "sd"
    StableDiffusionPipeline(
        vae=build_vae(preset),
        text_encoder=te,
        tokenizer=tok,
        unet=build_unet(preset, te.config.hidden_size),
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(sd)
    btok = train_bart_tokenizer(corpus, 600)
    special = dict(
        bos_token_id=btok.bos_token_id,
        eos_token_id=btok.eos_token_id,
        pad_token_id=btok.pad_token_id,
        decoder_start_token_id=btok.eos_token_id,
    )
    side = p["florence_image_size"]
    fcfg = p["florence"]
    florence = build_florence2(fcfg, len(btok), btok.image_token_id, side, special)
    fl = out / "florence"
    florence.save_pretrained(fl)
    florence2_processor(btok, side, florence2_image_tokens(fcfg["vision"], side)).save_pretrained(fl)
    return fl, sd, p["image_size"]


def build_llm(preset: str, tokenizer: str | Path, out: str | Path, device: str = "cpu", seed: int = 0) -> Path:
    """A random ``Qwen2ForCausalLM`` folder (float32) with the tokenizer at ``tokenizer``; the
    preset's vocabulary size when it has one (ids of a smaller tokenizer all fall inside it)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    c = PRESETS[preset]["llm"]
    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = Qwen2Config(
        vocab_size=c["vocab_size"] or len(tok),
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["kv_heads"],
        max_position_embeddings=c.get("max_position_embeddings", 512),
        rope_parameters={"rope_type": "default", "rope_theta": c.get("rope_theta", 10000.0)},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):  # a 3B model initialises in seconds on a GPU, minutes on a CPU
        model = Qwen2ForCausalLM(config)
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


TOY_LM = Path(__file__).resolve().parents[2] / "models" / "toy" / "lm"  # the shipped toy LM's tokenizer


def build_stage2_stack(out: str | Path, preset: str = "tiny", llm_tokenizer: str | Path = TOY_LM):
    """(VLV encoder folder, T2I folder, LM folder, image side) of random weights, on the stage-1
    stack under ``out`` (reused when it is there)."""
    from .vlv_encoder import VLVEncoder

    out = Path(out)
    florence, sd, side = stage1_stack(out, preset)
    clip_dim = PRESETS[preset]["text_encoder"]["hidden_size"]
    VLVEncoder.from_florence(str(florence), 77, clip_dim).save_pretrained(out / "encoder")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    llm = build_llm(preset, llm_tokenizer, out / "llm", device)
    return out / "encoder", sd, llm, side


def stage1_stack(out: str | Path, preset: str) -> tuple[Path, Path, int]:
    """``build_stage1_stack``'s folders under ``out``, built unless a previous build left them there."""
    out = Path(out)
    if (out / "florence" / "config.json").exists() and (out / "sd" / "model_index.json").exists():
        return out / "florence", out / "sd", PRESETS[preset]["image_size"]
    return build_stage1_stack(out, preset)


def build_tiny_sd3(tokenizer: str | Path, out: str | Path, side: int = 32, seed: int = 0) -> Path:
    """A random ``StableDiffusion3Pipeline`` (the class path of the paper's evaluation renderer,
    SD-3.5-medium), tiny, rendering ``side`` px: an ``SD3Transformer2DModel`` with SD-3.5's options
    (a dual-attention layer, RMS query/key norm), two CLIP text encoders with projections, a T5
    encoder, a KL VAE with a shift factor, the flow-matching Euler scheduler. All three tokenizers are
    the CLIP tokenizer at ``tokenizer`` (a T5 only needs ids within its vocabulary)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = CLIPTokenizer.from_pretrained(tokenizer)
    clip = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        projection_dim=32, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    t5 = T5Config(
        vocab_size=len(tok), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.pad_token_id,
    )  # fmt: skip
    blocks = (4, 8, 8)  # three blocks: latents at a quarter of the side
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=blocks, layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * len(blocks), up_block_types=["UpDecoderBlock2D"] * len(blocks),
        norm_num_groups=4, sample_size=side, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    transformer = SD3Transformer2DModel(
        sample_size=side // 2 ** (len(blocks) - 1), patch_size=1, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32,
        pooled_projection_dim=64, pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm",
    )  # fmt: skip
    folder = Path(out)
    StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(clip),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(clip),
        tokenizer_2=tok,
        text_encoder_3=T5EncoderModel(t5),
        tokenizer_3=tok,
    ).save_pretrained(folder)
    return folder


def build_tiny_llava(lm_folder: str | Path, out: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A random ``LlavaForConditionalGeneration`` with a chat template (the chat-VLM class path), tiny,
    on the tokenizer of ``lm_folder`` (a Qwen2-style byte-level BPE)."""
    from transformers import (
        AutoTokenizer,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )

    from .toy import clip_image_processor

    tok = AutoTokenizer.from_pretrained(lm_folder)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
    )
    text = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    image_token = tok.convert_tokens_to_ids("<image>")
    out = Path(out)
    LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token, vision_feature_layer=-1)
    ).save_pretrained(out)
    LlavaProcessor(
        image_processor=clip_image_processor(image_size),
        tokenizer=tok,
        patch_size=8,
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        chat_template=template,
    ).save_pretrained(out)
    return out


QWEN_VL_TEMPLATE = (  # Qwen2.5-VL's chat format, images as <|vision_start|><|image_pad|><|vision_end|>
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


QWEN25VL = {  # Qwen2.5-VL-7B-Instruct's published config.json at "paper"; the full vocabulary there
    "tiny": {
        "vision": {
            "depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
            "window_size": 56, "fullatt_block_indexes": [0],
        },
        "text": {
            "vocab_size": None, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "mrope_section": [2, 3, 3],
        },
        # the smallest input the real processor allows (56 x 56 px: 16 patches, 4 tokens after merging)
        "pixels": (56 * 56, 56 * 56),
    },
    "paper": {
        "vision": {
            "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
            "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
        },
        "text": {
            "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "mrope_section": [16, 24, 24],
            "rope_theta": 1000000.0, "max_position_embeddings": 128000,
        },
        "pixels": (3136, 12845056),  # the hub processor's min_pixels / max_pixels
    },
}  # fmt: skip


def build_qwen25vl(
    lm_folder: str | Path, out: str | Path, preset: str = "tiny", device: str = "cpu", seed: int = 0
) -> Path:
    """A random ``Qwen2_5_VLForConditionalGeneration`` (the paper profile's teacher class) at the preset's
    size, on the tokenizer of ``lm_folder``, saved in the layout of the hub's Qwen/Qwen2.5-VL-7B-Instruct:
    ``preprocessor_config.json`` naming ``Qwen2VLImageProcessor`` and ``Qwen2_5_VLProcessor``,
    ``chat_template.json``, the tokenizer files. Written file by file: the processor class itself cannot
    be built without torchvision. At ``paper`` the weights are built on ``device`` and saved in bf16
    (16.6 GB), the precision the teacher runs in on a GPU."""
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    p = QWEN25VL[preset]
    tok = AutoTokenizer.from_pretrained(lm_folder)
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    text = dict(p["text"])
    mrope = text.pop("mrope_section")
    config = Qwen2_5_VLConfig(
        vision_config={**p["vision"], "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        text_config={
            **text, "vocab_size": text["vocab_size"] or len(tok), "bos_token_id": None,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
            "rope_scaling": {"type": "mrope", "mrope_section": mrope},
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(seed)
    out = Path(out)
    with torch.device(device):  # 8.3B parameters at "paper": seconds on a GPU
        model = Qwen2_5_VLForConditionalGeneration(config)
    if preset != "tiny":
        model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    del model
    tok.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=p["pixels"][0], max_pixels=p["pixels"][1]).save_pretrained(out)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    pre.update(image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2_5_VLProcessor")
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_VL_TEMPLATE}))
    return out


class TinyInception(torch.nn.Module):
    """A random-weight stand-in with the interface of NVIDIA's Inception-v3 TorchScript
    (``forward(uint8-valued NCHW, return_features=...)``, resizing inside): ``features`` pool
    features instead of 2048."""

    def __init__(self, features: int = 4, side: int = 32):
        super().__init__()
        self.side = side
        self.conv = torch.nn.Conv2d(3, features, 3, padding=1)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img.to(torch.float32), size=(self.side, self.side), mode="bilinear")
        f = torch.relu(self.conv((x - 128.0) / 128.0)).mean(dim=(2, 3))
        return f if return_features else f.sum(dim=1)


def build_tiny_inception(out: str | Path, features: int = 4, seed: int = 0) -> Path:
    """A TorchScript file loaded by ``vlv.models.inception.InceptionFeatures`` like the real one."""
    import warnings

    torch.manual_seed(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; it still scripts and saves
        warnings.simplefilter("ignore")
        torch.jit.script(TinyInception(features).eval()).save(str(out))
    return out
