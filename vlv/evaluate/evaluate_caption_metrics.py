"""Reference-based caption metrics of one captioner on the evaluation split.

BLEU-4, METEOR, ROUGE-L and CIDEr with pycocoevalcap and its PTB tokenizer (Java); SPICE only where
its jar and Stanford CoreNLP models are present (otherwise reported as not computed, never as 0).
CLIPScore and RefCLIPScore as defined by Hessel et al. (2021): CLIP-S = 2.5 * max(cos(caption,
image), 0); RefCLIP-S = harmonic mean of CLIP-S and max(max over references of cos(caption,
reference), 0), with the profile's CLIP (toy: the toy CLIP; its numbers are not comparable with
ViT-B/32 CLIPScores). References: the split's ``captions`` (five per image, COCO format). The
``reference`` captioner's caption is the first reference, so it is scored against the other four
(``--exclude-first-reference``: the usual leave-one-out human baseline).

Example:
    python -m vlv.evaluate.evaluate_caption_metrics --clip models/toy/clip --images results/generate_shapes/eval \
        --captions results/caption/vlv_pairs100.jsonl --out results/evaluate/caption_metrics/vlv_pairs100.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vlv.data.shards import iter_batches
from vlv.evaluate.evaluate_captions_shapes import read_captions
from vlv.manifest import build_manifest, write_manifest

CLIP_W = 2.5


def coco_metrics(references: dict[str, list[str]], candidates: dict[str, str]) -> dict[str, float | None]:
    """pycocoevalcap scores (the scorers compute corpus-level BLEU/CIDEr as in the COCO toolkit)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in refs] for k, refs in references.items()})
    res = tok.tokenize({k: [{"caption": candidates[k]}] for k in references})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {"BLEU-4": float(bleu[3]), "ROUGE-L": float(Rouge().compute_score(gts, res)[0])}
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    out["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    out["SPICE"] = spice_score(gts, res)
    return out


def spice_score(gts, res) -> float | None:
    """SPICE where its Stanford CoreNLP jars are installed (pycocoevalcap would download them: never here)."""
    import pycocoevalcap.spice as spice_pkg

    lib = Path(spice_pkg.__file__).parent / "lib"
    if not (lib / "stanford-corenlp-3.6.0.jar").exists():
        return None
    from pycocoevalcap.spice.spice import Spice

    return float(Spice().compute_score(gts, res)[0])


IMAGE_BATCH = 256  # images decoded and embedded at a time (ClipFeatures' own batch)
SIMILARITY_BLOCK = 1024  # candidates per block of the candidate x reference similarity (30K x 150K at once: 18 GB)


def clip_scores(clip, images, candidates: list[str], references: list[list[str]]) -> dict[str, float]:
    """CLIPScore and RefCLIPScore (Hessel et al. 2021, w = 2.5) of candidates for images (uint8
    NxHxWx3, or their CLIP image features already computed)."""
    feats = images if isinstance(images, torch.Tensor) else clip.images(images)
    img = torch.nn.functional.normalize(feats, dim=-1)
    cand = torch.nn.functional.normalize(clip.texts(candidates), dim=-1)
    flat = [r for refs in references for r in refs]
    ref = torch.nn.functional.normalize(clip.texts(flat), dim=-1)
    clip_s = CLIP_W * (img * cand).sum(-1).clamp(min=0)
    best, start = [], 0
    for i0 in range(0, len(references), SIMILARITY_BLOCK):  # candidates against their block's references
        block = references[i0 : i0 + SIMILARITY_BLOCK]
        width = sum(len(refs) for refs in block)
        per_ref = cand[i0 : i0 + len(block)] @ ref[start : start + width].T
        offset = 0
        for j, refs in enumerate(block):
            best.append(per_ref[j, offset : offset + len(refs)].max().clamp(min=0))
            offset += len(refs)
        start += width
    best = torch.stack(best)
    ref_clip_s = torch.where(clip_s + best > 0, 2 * clip_s * best / (clip_s + best), torch.zeros_like(best))
    return {"CLIPScore": float(clip_s.mean()), "RefCLIPScore": float(ref_clip_s.mean())}


def image_features(clip, images: str, wanted: set[str]) -> tuple[list[str], torch.Tensor, list[dict]]:
    """(keys, CLIP image features, metadata) of the ``wanted`` images of a shard folder, in shard
    order, streamed a batch at a time (30K evaluation images at 512 px would be 24 GB at once)."""
    keys, feats, metas = [], [], []
    for batch_keys, batch, batch_metas in iter_batches(images, IMAGE_BATCH):
        sel = [i for i, k in enumerate(batch_keys) if k in wanted]
        if sel:
            keys += [batch_keys[i] for i in sel]
            metas += [batch_metas[i] for i in sel]
            feats.append(clip.images(batch[sel]))
    return keys, torch.cat(feats) if feats else torch.zeros((0, clip.num_features)), metas


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--captions", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--exclude-first-reference", action="store_true", help="for the reference captioner itself")
    args = p.parse_args(argv)
    from vlv.models.clip_features import ClipFeatures

    cands = read_captions(args.captions)
    clip = ClipFeatures(args.clip)
    keys, feats, metas = image_features(clip, args.images, set(cands))
    if len(keys) != len(cands):
        raise SystemExit(f"{args.captions}: {len(cands) - len(keys)} keys are not images of {args.images}")
    first = 1 if args.exclude_first_reference else 0
    refs = {k: m["captions"][first:] for k, m in zip(keys, metas)}
    result = {"images": len(keys), "references_per_image": len(next(iter(refs.values()))), **coco_metrics(refs, cands)}
    result.update(clip_scores(clip, feats, [cands[k] for k in keys], [refs[k] for k in keys]))
    result["implementation"] = "pycocoevalcap 1.2 (PTB tokenizer); CLIPScore/RefCLIPScore: Hessel et al. 2021, w=2.5"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_manifest(out.with_suffix(".manifest.json"), build_manifest("evaluate_caption_metrics", vars(args), None))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
