"""Pretrain the toy vision-encoder stand-in (``Florence2ForConditionalGeneration``) briefly.

The stand-in for Florence-2-large. Only its DaViT tower and image projection are pretrained, on an
objective other than captioning: from the mean of the projected visual tokens, a linear probe
predicts which colours and shapes are present and which grid cells are occupied (multi-label,
binary cross-entropy). The probe is dropped afterwards. So stage 1 starts from a backbone that sees
Shapes but does not already know how to caption them; the BART language model stays as built.

Outputs: ``--out DIR`` (model + ``Florence2Processor`` folder, manifest.json, loss.csv/png).

Example:
    python -m vlv.toy.pretrain_toy_vision --params "$(python -m vlv.config pretrain_toy.vision)" \
        --out results/pretrain_toy/vision --work work/pretrain_toy/vision
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vlv.models.toy import (
    build_florence2,
    florence2_image_tokens,
    florence2_processor,
    shapes_corpus,
    train_bart_tokenizer,
)
from vlv.shapes.world import Scene, WorldSpec
from vlv.toy.standin_training import StandinTrainer, standin_args


def attribute_targets(scenes: list[Scene], spec: WorldSpec) -> torch.Tensor:
    """Per scene: colours present, shapes present, cells occupied (0/1)."""
    n_c, n_s, n_cell = len(spec.colours), len(spec.shapes), spec.grid * spec.grid
    y = torch.zeros(len(scenes), n_c + n_s + n_cell)
    for i, s in enumerate(scenes):
        for o in s.objects:
            y[i, spec.colours.index(o.colour)] = 1
            y[i, n_c + spec.shapes.index(o.shape)] = 1
            y[i, n_c + n_s + o.row * spec.grid + o.col] = 1
    return y


def main(argv=None) -> int:
    args, params, log = standin_args(__doc__, argv)
    spec = WorldSpec.from_config(params["shapes"])
    m, tr = params["model"], params["train"]
    trainer = StandinTrainer("pretrain_toy_vision", args, params, log)
    tokenizer = train_bart_tokenizer(shapes_corpus(spec, seed=trainer.seed), m["vocab_size"])
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    model = build_florence2(m, len(tokenizer), tokenizer.image_token_id, spec.image_size, special)
    for name, p in model.named_parameters():  # only the vision side learns here
        p.requires_grad = not name.startswith(("model.language_model", "lm_head"))
    scenes, pool = trainer.image_pool(spec)
    targets = attribute_targets(scenes, spec).to(trainer.device)
    probe = torch.nn.Linear(m["text"]["d_model"], targets.shape[1])

    def loss_fn(step: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        idx = torch.from_numpy(rng.integers(len(scenes), size=tr["batch_size"])).to(trainer.device)
        feats = model.get_image_features(pixel_values=pool[idx])
        feats = getattr(feats, "pooler_output", feats)
        return F.binary_cross_entropy_with_logits(probe(feats.mean(1)), targets[idx])

    trainer.fit({"florence2": model, "probe": probe}, loss_fn)
    for p in model.parameters():
        p.requires_grad = True
    processor = florence2_processor(tokenizer, spec.image_size, florence2_image_tokens(m["vision"], spec.image_size))
    model.save_pretrained(trainer.out)
    processor.save_pretrained(trainer.out)
    trainer.finish(title="toy Florence-2 vision tower")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
