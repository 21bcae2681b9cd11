"""The names of ablation variants, parsed in one place (the Snakemake rules and the tables use them).

A variant is the main run with a few config values changed; its name is its artefact path:

- stage-1 encoders, ``results/distill_stage1/<name>``: ``encoder`` (the config as it is),
  ``nq<N>`` (N learnable queries instead of ``stage1.num_queries``), ``data<P>`` (P % of the
  stage-1 subset instead of ``stage1.data_percent``);
- captioners, ``results/finetune_stage2/<name>``: ``<init>_pairs<P>`` (init ``vlv``,
  ``no_stage1`` or ``direct``, P % of the pair set), optionally followed by ``-<trainable>``
  (``mlp``, ``mlp_llm``, ``mlp_llm_encoder`` instead of ``stage2.trainable``) and ``-llm_<key>``
  (the causal LM ``ablations.llm.<key>`` instead of ``models.llm``), in that order. ``direct``
  (the direct captioner, with its own recipe ``stage2.direct``) takes no suffix.
"""

from __future__ import annotations

import re

STAGE1_PATTERN = r"encoder|nq[0-9]+|data[0-9]+"
TRAINABLE = ("mlp", "mlp_llm", "mlp_llm_encoder")
INITS = ("vlv", "no_stage1", "direct")
CAPTIONER_PATTERN = r"direct_pairs[0-9]+|(vlv|no_stage1)_pairs[0-9]+(-(mlp|mlp_llm|mlp_llm_encoder))?(-llm_[a-z0-9]+)?"
_CAPTIONER = re.compile(
    r"^(?P<init>vlv|no_stage1|direct)_pairs(?P<percent>[0-9]+)"
    r"(-(?P<trainable>mlp_llm_encoder|mlp_llm|mlp))?(-llm_(?P<llm>[a-z0-9]+))?$"
)


def stage1_overrides(name: str) -> dict:
    """The stage-1 config values a stage-1 variant changes."""
    if name == "encoder":
        return {}
    m = re.fullmatch(r"(nq|data)([0-9]+)", name)
    if not m:
        raise ValueError(f"not a stage-1 variant: {name!r} (encoder, nq<N> or data<P>)")
    value = int(m.group(2))
    if m.group(1) == "nq":
        if value < 1:
            raise ValueError(f"{name}: the number of queries must be at least 1")
        return {"num_queries": value}
    if not 0 < value <= 100:
        raise ValueError(f"{name}: the data share must be in 1..100 %")
    return {"data_percent": value}


def parse_captioner(name: str) -> dict | None:
    """``{"init", "percent", "trainable", "llm"}`` of a trained captioner's name (None when the name
    is not one: reference, teacher, an open VLM). ``trainable`` and ``llm`` are None when the config's
    values hold."""
    m = _CAPTIONER.match(name)
    if not m or (m["init"] == "direct" and (m["trainable"] or m["llm"])):
        return None
    return {"init": m["init"], "percent": int(m["percent"]), "trainable": m["trainable"], "llm": m["llm"]}


def captioner_name(init: str, percent: int = 100, trainable: str | None = None, llm: str | None = None) -> str:
    name = f"{init}_pairs{percent}"
    if trainable:
        name += f"-{trainable}"
    if llm:
        name += f"-llm_{llm}"
    if parse_captioner(name) is None:
        raise ValueError(f"not a valid captioner name: {name!r}")
    return name
