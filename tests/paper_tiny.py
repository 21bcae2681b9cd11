"""Paper-tiny: the paper profile with every model a tiny random-weight folder and every data set a
tiny local stand-in, so that the paper profile's own rules run end to end on a CPU.

``python tests/paper_tiny.py --out DIR`` writes
  DIR/models/  tiny folders of the paper profile's classes (Florence-2, an SD-2-style
               ``StableDiffusionPipeline`` with a KL VAE, ``CLIPModel``, ``Qwen2ForCausalLM`` as the
               caption decoder and the VQA reader, ``Qwen2_5_VLForConditionalGeneration`` in the hub's
               layout as the teacher and the open captioner Qwen2.5-VL, ``LlavaForConditionalGeneration``
               as the other open captioner and the arena judge) and a TorchScript Inception of the
               real one's interface;
  DIR/data/    an MS-COCO-2014-val-style image zip and caption annotations, VQAv2-style question and
               answer zips, and LAION-style metadata (parquet) whose URLs point at local JPEGs
               (``file://``), two of them dead and one above the watermark limit;
  DIR/config.yaml  the overlay: ``snakemake --configfile config.yaml config/paper.yaml DIR/config.yaml ...``
               (data URLs are ``file://`` with their SHA-256 pinned; training through the committed
               accelerate config with 2 processes; a few steps everywhere).

Table 1's Inception-v3 is a tiny random TorchScript module of the real file's interface, fetched by
rule download like it. Its targets
are the paper profile's rules up to Table 3 (``vqa.csv``), the stage-1 reconstructions and Table 1's
renders (a tiny ``StableDiffusion3Pipeline``, the class of SD-3.5-medium) and their FID.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image, ImageDraw

from vlv.config import ROOT
from vlv.paper_data.prepare_coco import sample_ids


def build_models(out: Path, seed: int = 0) -> dict[str, Path]:
    from transformers import AutoTokenizer, CLIPProcessor, CLIPTokenizer

    from vlv.models.paper_sized import (
        build_qwen25vl,
        build_stage1_stack,
        build_tiny_inception,
        build_tiny_llava,
        build_tiny_sd3,
    )
    from vlv.models.toy import build_clip, build_qwen2, clip_image_processor

    florence, sd, side = build_stage1_stack(out, "tiny", seed)
    torch.manual_seed(seed)
    ctok = CLIPTokenizer.from_pretrained(sd / "tokenizer")
    clip = build_clip(
        {"text_hidden_size": 16, "vision_hidden_size": 16, "text_layers": 1, "vision_layers": 1, "heads": 2,
         "max_length": 77, "patch_size": 8, "projection_dim": 16},
        len(ctok), side, ctok.bos_token_id, ctok.eos_token_id, ctok.pad_token_id,
    )  # fmt: skip
    clip.save_pretrained(out / "clip")
    CLIPProcessor(image_processor=clip_image_processor(side), tokenizer=ctok).save_pretrained(out / "clip")
    ltok = AutoTokenizer.from_pretrained(ROOT / "models/toy/lm")
    llm = build_qwen2(
        {"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2, "kv_heads": 1, "max_length": 512},
        len(ltok),
        ltok.eos_token_id,
    )
    llm.save_pretrained(out / "llm")
    ltok.save_pretrained(out / "llm")
    llava = build_tiny_llava(out / "llm", out / "llava", side, seed)
    qwen25vl = build_qwen25vl(out / "llm", out / "qwen25vl", "tiny", seed=seed)
    sd3 = build_tiny_sd3(sd / "tokenizer", out / "sd3", side, seed)
    inception = build_tiny_inception(out / "inception-2015-12-05.pt", seed=seed)
    return {
        "florence": florence, "sd": sd, "sd3": sd3, "clip": out / "clip", "llm": out / "llm", "llava": llava,
        "qwen25vl": qwen25vl, "inception": inception, "side": side,
    }  # fmt: skip


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


N_EVAL = 8  # evaluation.n_images of the overlay
# Files under COCO's .jpg names that are not plain JPEGs: decodable ones first, then two broken ones
ODD_FILES = ("cmyk_jpeg", "png_16bit", "palette_png", "rgba_png", "exif_rotated_jpeg", "truncated_jpeg", "text")
BROKEN_FILES = ("truncated_jpeg", "text")


def _odd_file(kind: str, img: Image.Image) -> bytes:
    """``img`` stored as ``kind`` (see ODD_FILES)."""
    buf = io.BytesIO()
    if kind == "cmyk_jpeg":
        img.convert("CMYK").save(buf, format="JPEG", quality=90)
    elif kind == "png_16bit":
        Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257).save(buf, format="PNG")
    elif kind == "palette_png":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(buf, format="PNG")
    elif kind == "rgba_png":
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.new("L", img.size, 128))
        rgba.save(buf, format="PNG")
    elif kind == "exif_rotated_jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees to show
        img.transpose(Image.Transpose.ROTATE_90).save(buf, format="JPEG", quality=90, exif=exif)
    elif kind == "truncated_jpeg":
        return _jpeg(img)[: len(_jpeg(img)) // 2]
    elif kind == "text":
        return b"this is not an image\n"
    return buf.getvalue()


def _picture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A flat background with one coloured disc or box: something for the models to look at."""
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    x, y, r = int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4)), min(w, h) // 5
    fill = tuple(int(c) for c in rng.integers(0, 256, 3))
    (d.ellipse if rng.random() < 0.5 else d.rectangle)((x - r, y - r, x + r, y + r), fill=fill)
    return img


def _zip(path: Path, entries: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def build_data(out: Path, inception: Path, n_coco: int = 12, n_laion: int = 40, seed: int = 0) -> dict:
    """COCO/VQAv2/OK-VQA-style zips and LAION-style metadata with local file:// URLs; the tiny
    Inception stand-in is fetched like the real file (rule download)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(int(i) for i in rng.choice(500_000, n_coco, replace=False))
    images, anns, questions, answers, ok_questions, ok_answers = {}, [], [], [], [], []
    meta = []
    # the evaluation sample (n_images 8, seed 0, as prepare_coco draws it) gets odd files: one in each of
    # the odd formats, which the pipeline must show as meant, and two broken ones, which it must skip
    odd = dict(zip(sample_ids(ids, N_EVAL, 0), ODD_FILES, strict=False))
    for i in ids:
        w, h = int(rng.integers(48, 96)), int(rng.integers(48, 96))
        name = f"COCO_val2014_{i:012d}.jpg"
        images[f"val2014/{name}"] = _odd_file(odd[i], _picture(rng, w, h)) if i in odd else _jpeg(_picture(rng, w, h))
        meta.append({"id": i, "file_name": name, "width": w, "height": h})
        anns += [{"id": 10 * i + j, "image_id": i, "caption": f"a picture number {j} of a thing"} for j in range(5)]
        for k, (q, a) in enumerate([("how many objects are there?", "1"), ("is there a shape?", "yes")]):
            questions.append({"question_id": 100 * i + k, "image_id": i, "question": q})
            kind = "number" if k == 0 else "yes/no"
            answers.append({"question_id": 100 * i + k, "image_id": i, "answer_type": kind,
                            "answers": [{"answer": a, "answer_id": n} for n in range(10)]})  # fmt: skip
        if i % 2:  # OK-VQA asks about some of the images only; its answers need outside knowledge
            ok_questions.append({"question_id": 10 * i, "image_id": i, "question": "what is this picture for?"})
            ok_answers.append({"question_id": 10 * i, "image_id": i, "answer_type": "other",
                               "answers": [{"answer": "art", "answer_id": n} for n in range(10)]})  # fmt: skip
    files = {
        "val2014.zip": _zip(out / "val2014.zip", images),
        "annotations_trainval2014.zip": _zip(
            out / "annotations_trainval2014.zip",
            {"annotations/captions_val2014.json": json.dumps({"images": meta, "annotations": anns})},
        ),
        "v2_Questions_Val_mscoco.zip": _zip(
            out / "v2_Questions_Val_mscoco.zip",
            {"v2_OpenEnded_mscoco_val2014_questions.json": json.dumps({"questions": questions})},
        ),
        "v2_Annotations_Val_mscoco.zip": _zip(
            out / "v2_Annotations_Val_mscoco.zip",
            {"v2_mscoco_val2014_annotations.json": json.dumps({"annotations": answers})},
        ),
        "OpenEnded_mscoco_val2014_questions.json.zip": _zip(
            out / "OpenEnded_mscoco_val2014_questions.json.zip",
            {"OpenEnded_mscoco_val2014_questions.json": json.dumps({"questions": ok_questions})},
        ),
        "mscoco_val2014_annotations.json.zip": _zip(
            out / "mscoco_val2014_annotations.json.zip",
            {"mscoco_val2014_annotations.json": json.dumps({"annotations": ok_answers})},
        ),
        "inception-2015-12-05.pt": inception,
    }
    laion = out / "laion"
    (laion / "images").mkdir(parents=True, exist_ok=True)
    (laion / "metadata").mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(n_laion):
        w, h = int(rng.integers(520, 640)), int(rng.integers(520, 640))
        path = laion / "images" / f"{n:05d}.jpg"
        path.write_bytes(_jpeg(_picture(rng, w, h)))
        rows.append({"URL": path.resolve().as_uri(), "TEXT": f"image {n}", "WIDTH": w, "HEIGHT": h, "pwatermark": 0.1})
    dead = (laion / "images" / "gone.jpg").resolve().as_uri()
    rows += [{"URL": dead, "TEXT": "dead", "WIDTH": 600, "HEIGHT": 600, "pwatermark": 0.1}] * 2
    rows.append({"URL": rows[0]["URL"], "TEXT": "watermarked", "WIDTH": 600, "HEIGHT": 600, "pwatermark": 0.9})
    pd.DataFrame(rows).to_parquet(laion / "metadata" / "part-00000.parquet")
    digest = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in files.items()}
    return {
        "files": {k: {"url": p.resolve().as_uri(), "sha256": digest[k]} for k, p in files.items()},
        "laion_metadata": str(laion / "metadata"),
    }


def overlay(models: dict, data: dict, img2dataset: str) -> dict:
    """The paper profile with tiny models, tiny data and a few steps everywhere."""
    side = int(models["side"])
    m = {k: str(v) for k, v in models.items() if k != "side"}
    return {
        "models": {
            "vision_encoder": m["florence"],
            "t2i": m["sd"],
            "clip": m["clip"],
            "llm": m["llm"],
            "renderer": m["sd3"],  # the SD-3.5 renderer's class, StableDiffusion3Pipeline
        },  # fmt: skip
        "data": {
            "files": data["files"],
            "image_size": side,
            "coco_shard_size": 4,
            "max_bad_share": 0.25,  # two of the eight evaluation files are broken on purpose
            "laion": {
                "metadata": data["laion_metadata"],
                "img2dataset": img2dataset,
                "processes": 1,
                "threads": 4,
                "shard_size": 16,
                "retries": 0,
                "timeout": 5,
            },  # fmt: skip
            "pairs": 24,
            "loader_workers": 1,  # a real worker process per training process
        },
        "subset": {"top_n": 32, "batch_size": 16},
        # the committed accelerate config, 2 CPU processes (gloo)
        "launch": {
            "stage1": {"config": "config/accelerate/ddp.yaml", "processes": 2},
            "stage2": {"config": "config/accelerate/ddp.yaml", "processes": 2},
        },  # fmt: skip
        "stage1": {
            "steps": 3,
            "batch_size": 4,
            "micro_batch_size": 1,
            "log_every": 1,
            "checkpoint_every": 100,
            "reconstruct_steps": 2,
            "n_eval_images": 4,
            "num_queries": 8,
            "reconstruct_guidance": [1.0, 3.0],
        },  # fmt: skip
        "teacher": {"model": m["qwen25vl"], "batch_size": 4, "max_new_tokens": 8},  # the paper profile's class
        "stage2": {
            "steps": 2,
            "batch_size": 4,
            "micro_batch_size": 1,
            "log_every": 1,
            "checkpoint_every": 100,
            "direct": {"steps": 2, "validate_every": 1},
            "max_caption_tokens": 32,
            "max_new_tokens": 8,
            "num_beams": 1,
            "caption_batch_size": 4,
            "open_captioners": {
                "florence2_large": m["florence"],
                "qwen25vl_7b": m["qwen25vl"],
                "llava15_7b": m["llava"],
            },
        },  # fmt: skip
        "evaluation": {"n_images": N_EVAL, "renderer_steps": 2, "renderer_guidance": [1.0, 3.0]},
        "arena": {"model": m["llava"], "n_images": 4, "batch_size": 4, "max_new_tokens": 8},
        "vqa": {"model": m["llm"], "shots": [0, 2], "batch_size": 8, "max_new_tokens": 4},
        "ablations": {
            "num_queries": [4],
            "stage1_data_percents": [50],
            "trainable": ["mlp"],
            "llm": [{"name": "base", "model": None}],
        },  # fmt: skip
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True)
    p.add_argument("--img2dataset", default=str(ROOT / ".venv-img2dataset/bin/img2dataset"))
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    models = build_models(out / "models")
    data = build_data(out / "data", models["inception"])
    (out / "config.yaml").write_text(
        "# paper-tiny overlay (written by tests/paper_tiny.py): use after config.yaml and config/paper.yaml\n"
        + yaml.safe_dump(overlay(models, data, args.img2dataset), sort_keys=False)
    )
    print(f"{out / 'config.yaml'}: snakemake --configfile config.yaml config/paper.yaml {out / 'config.yaml'} ...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
