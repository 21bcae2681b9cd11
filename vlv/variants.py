"""The names of ablation variants, parsed in one place (the Snakemake rules and the tables use them).

A variant is the main run with a few config values changed; its name is its artefact path:

- stage-1 encoders, ``results/distill_stage1/<name>``: ``encoder`` (the config as it is),
  ``nq<N>`` (N learnable queries instead of ``stage1.num_queries``), ``data<P>`` (P % of the
  stage-1 subset instead of ``stage1.data_percent``), ``seed<N>`` (``stage1.seed`` N: the
  ``seeds`` target);
- captioners, ``results/finetune_stage2/<name>``: ``<init>_pairs<P>`` (init ``vlv``,
  ``no_stage1`` or ``direct``, P % of the pair set), optionally followed by ``-<trainable>``
  (``mlp``, ``mlp_llm``, ``mlp_llm_encoder`` instead of ``stage2.trainable``) and ``-llm_<key>``
  (the causal LM ``ablations.llm.<key>`` instead of ``models.llm``), in that order, then
  ``-seed<N>`` (``stage2.seed`` N and, for ``vlv``, the stage-1 encoder of seed N: the ``seeds``
  target). ``direct`` (the direct captioner, with its own recipe ``stage2.direct``) takes only
  the seed suffix.
"""

from __future__ import annotations

import re

STAGE1_PATTERN = r"encoder|nq[0-9]+|data[0-9]+|seed[0-9]+"
TRAINABLE = ("mlp", "mlp_llm", "mlp_llm_encoder")
ENCODER_FROZEN = ("mlp", "mlp_llm")  # the sets that leave the stage-1 encoder as it is (vlv_captioner.TRAINABLE)
INITS = ("vlv", "no_stage1", "direct")
CAPTIONER_PATTERN = (
    r"(direct_pairs[0-9]+|(vlv|no_stage1)_pairs[0-9]+(-(mlp|mlp_llm|mlp_llm_encoder))?(-llm_[a-z0-9]+)?)"
    r"(-seed[0-9]+)?"
)
_CAPTIONER = re.compile(
    r"^(?P<init>vlv|no_stage1|direct)_pairs(?P<percent>[0-9]+)"
    r"(-(?P<trainable>mlp_llm_encoder|mlp_llm|mlp))?(-llm_(?P<llm>[a-z0-9]+))?(-seed(?P<seed>[0-9]+))?$"
)


def stage1_overrides(name: str) -> dict:
    """The stage-1 config values a stage-1 variant changes."""
    if name == "encoder":
        return {}
    m = re.fullmatch(r"(nq|data|seed)([0-9]+)", name)
    if not m:
        raise ValueError(f"not a stage-1 variant: {name!r} (encoder, nq<N>, data<P> or seed<N>)")
    value = int(m.group(2))
    if m.group(1) == "seed":
        return {"seed": value}
    if m.group(1) == "nq":
        if value < 1:
            raise ValueError(f"{name}: the number of queries must be at least 1")
        return {"num_queries": value}
    if not 0 < value <= 100:
        raise ValueError(f"{name}: the data share must be in 1..100 %")
    return {"data_percent": value}


def parse_captioner(name: str) -> dict | None:
    """``{"init", "percent", "trainable", "llm", "seed"}`` of a trained captioner's name (None when
    the name is not one: reference, teacher, an open VLM). ``trainable``, ``llm`` and ``seed`` are
    None when the config's values hold."""
    m = _CAPTIONER.match(name)
    if not m or (m["init"] == "direct" and (m["trainable"] or m["llm"])):
        return None
    seed = None if m["seed"] is None else int(m["seed"])
    return {"init": m["init"], "percent": int(m["percent"]), "trainable": m["trainable"], "llm": m["llm"], "seed": seed}


def captioner_name(
    init: str, percent: int = 100, trainable: str | None = None, llm: str | None = None, seed: int | None = None
) -> str:
    name = f"{init}_pairs{percent}"
    if trainable:
        name += f"-{trainable}"
    if llm:
        name += f"-llm_{llm}"
    if seed is not None:
        name += f"-seed{seed}"
    if parse_captioner(name) is None:
        raise ValueError(f"not a valid captioner name: {name!r}")
    return name


def seed_stage1(seed: int, main_seed: int) -> str:
    """The stage-1 variant of a seed: the main encoder for the config's own seed."""
    return "encoder" if seed == main_seed else f"seed{seed}"


def seed_captioner(init: str, seed: int, main_seed: int) -> str:
    """The whole-pair-set captioner of a seed: the main one for the config's own seed."""
    return captioner_name(init, 100, seed=None if seed == main_seed else seed)
