"""Pretrain the toy LLM stand-in (``Qwen2ForCausalLM`` + byte-level BPE tokenizer) on Shapes text.

The stand-in for the paper's pretrained Qwen2.5: before it ever sees an image embedding it has
learnt the language of the Shapes world (short captions and exhaustive teacher captions), each
text followed by the end-of-sequence token so that it has learnt to stop.

Outputs: ``--out DIR`` (model + tokenizer folder, manifest.json, loss.csv/png).

Example:
    python -m vlv.toy.pretrain_toy_lm --params "$(python -m vlv.config pretrain_toy.lm)" \
        --out results/pretrain_toy/lm --work work/pretrain_toy/lm
"""

from __future__ import annotations

import numpy as np
import torch

from vlv.models.toy import build_qwen2, shapes_corpus, train_lm_tokenizer
from vlv.shapes.captions import short_caption, teacher_caption
from vlv.shapes.world import WorldSpec, sample_scenes
from vlv.toy.standin_training import StandinTrainer, standin_args


def lm_batch(texts: list[str], tokenizer, max_length: int) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask/labels with EOS appended; padding carries no loss, the EOS does."""
    eos = tokenizer.eos_token_id
    seqs = [tokenizer(t, add_special_tokens=False).input_ids[: max_length - 1] + [eos] for t in texts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, : len(s)] = torch.tensor(s)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def main(argv=None) -> int:
    args, params, log = standin_args(__doc__, argv)
    spec = WorldSpec.from_config(params["shapes"])
    m, tr = params["model"], params["train"]
    trainer = StandinTrainer("pretrain_toy_lm", args, params, log)
    tokenizer = train_lm_tokenizer(shapes_corpus(spec, seed=trainer.seed), m["vocab_size"])
    model = build_qwen2(m, len(tokenizer), tokenizer.eos_token_id)
    scenes = sample_scenes(spec, trainer.seed + 1, int(tr["pool_size"]))

    def loss_fn(step: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        idx = rng.integers(len(scenes), size=tr["batch_size"])
        texts = [
            teacher_caption(scenes[i], spec)
            if rng.random() < tr["teacher_caption_prob"]
            else short_caption(scenes[i], rng)
            for i in idx
        ]
        batch = {k: v.to(trainer.device) for k, v in lm_batch(texts, tokenizer, m["max_length"]).items()}
        return model(**batch).loss

    trainer.fit({"lm": model}, loss_fn)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(trainer.out)
    tokenizer.save_pretrained(trainer.out)
    trainer.finish(title="toy LM")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
