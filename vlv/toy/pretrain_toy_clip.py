"""Pretrain the toy CLIP stand-in (image and text towers) contrastively on Shapes image-caption pairs.

The stand-in for the paper's CLIP (used to filter the stage-1 subset and for CLIPScore). Each
step draws scenes from a pre-rendered pool and pairs every image with one of its captions (short
or teacher); the symmetric InfoNCE loss of ``CLIPModel(return_loss=True)`` trains both towers.
Batches are a pure function of (seed, step), so resuming reproduces an uninterrupted run.

Outputs: ``--out DIR`` (a ``CLIPModel`` + ``CLIPProcessor`` folder, manifest.json, loss.csv/png).

Example:
    python -m vlv.toy.pretrain_toy_clip --params "$(python -m vlv.config pretrain_toy.clip)" \
        --out results/pretrain_toy/clip --work work/pretrain_toy/clip
"""

from __future__ import annotations

import numpy as np
import torch

from vlv.models.toy import build_clip, clip_image_processor, shapes_corpus, train_clip_tokenizer
from vlv.shapes.captions import short_caption, teacher_caption
from vlv.shapes.world import WorldSpec
from vlv.toy.standin_training import StandinTrainer, standin_args


def main(argv=None) -> int:
    args, params, log = standin_args(__doc__, argv)
    spec = WorldSpec.from_config(params["shapes"])
    m, tr = params["model"], params["train"]
    trainer = StandinTrainer("pretrain_toy_clip", args, params, log)
    tokenizer = train_clip_tokenizer(shapes_corpus(spec, seed=tr["seed"]), m["vocab_size"], m["max_length"])
    model = build_clip(
        m, len(tokenizer), spec.image_size, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    scenes, pool = trainer.image_pool(spec)

    def loss_fn(step: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        idx = rng.choice(len(scenes), size=tr["batch_size"], replace=False)
        caps = [
            teacher_caption(scenes[i], spec)
            if rng.random() < tr["teacher_caption_prob"]
            else short_caption(scenes[i], rng)
            for i in idx
        ]
        tok = tokenizer(caps, padding="max_length", max_length=m["max_length"], truncation=True, return_tensors="pt")
        out = model(
            input_ids=tok.input_ids.to(trainer.device),
            attention_mask=tok.attention_mask.to(trainer.device),
            pixel_values=pool[torch.from_numpy(idx).to(trainer.device)],
            return_loss=True,
        )
        return out.loss

    trainer.fit({"clip": model}, loss_fn)

    from transformers import CLIPProcessor

    processor = CLIPProcessor(image_processor=clip_image_processor(spec.image_size), tokenizer=tokenizer)
    model.save_pretrained(trainer.out)
    processor.save_pretrained(trainer.out)
    trainer.finish(title="toy CLIP")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
