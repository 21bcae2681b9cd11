"""Load, merge and validate the workflow config; hand each stage its values as JSON.

``config.yaml`` is the toy profile, with the stand-ins' pretraining in ``config/pretrain_toy.yaml``
(``TOY_FILES``); overlays (``config/paper.yaml``, ``tests/config.micro.yaml``) are deep-merged over
them, later files winning, exactly as Snakemake merges ``--configfile``.
Validation uses ``schemas/config.schema.yaml`` (JSON Schema, no unknown keys) and reports the
dotted path of the offending key.

``stage_params`` turns the config into what each stage receives as ``--params``, for the rules and
for anyone running a stage by hand.

Example:
    python -m vlv.config stage2 --configfile config.yaml tests/config.micro.yaml
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Mapping
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "config.schema.yaml"
# The toy profile's files, in the order they merge: the workflow config and the stand-ins' pretraining
# overlay (the Snakefile loads both; overlays given on the command line come after them).
TOY_FILES = (ROOT / "config.yaml", ROOT / "config" / "pretrain_toy.yaml")


class ConfigError(ValueError):
    pass


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: str | Path):
    """A YAML file's content; a syntax error names the file, the line and the column."""
    with open(path) as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
            problem = getattr(e, "problem", None) or str(e)
            raise ConfigError(f"{where}: not valid YAML: {problem}") from None


def load_config(*paths: str | Path) -> dict:
    cfg: dict = {}
    for p in paths:
        data = read_yaml(p) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
        cfg = deep_merge(cfg, data)
    return cfg


def _leaves(node, path=()):
    """(path, value) of every string in a nested mapping / list."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    elif isinstance(node, str):
        yield path, node


def _error_paths(validator, cfg) -> set[tuple]:
    """The paths of every validation error, the alternatives of oneOf / anyOf included."""
    out, todo = set(), list(validator.iter_errors(cfg))
    while todo:
        e = todo.pop()
        out.add(tuple(e.absolute_path))
        todo.extend(e.context or ())
    return out


def typed_overrides(cfg: dict, overrides: dict, schema_path: str | Path = SCHEMA) -> dict:
    """Read the strings of command-line overrides as YAML where the schema refuses a string.

    Snakemake parses a nested ``--config stage1='{steps: 100, lr: 1e-4}'`` with YAML's BaseLoader, so
    every value below the top level arrives as a string ('100'). Each such string that fails the
    schema at its place is replaced by its YAML reading (or its float reading: YAML 1.1 reads
    ``1e-4`` as text) when that passes there. ``cfg`` is changed in place and returned.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(read_yaml(schema_path))
    for path, text in _leaves(overrides):
        failing = _error_paths(validator, cfg)
        if path not in failing:
            continue
        candidates = [yaml.safe_load(text)]
        try:
            candidates.append(float(text))
        except ValueError:
            pass
        parent = cfg
        for k in path[:-1]:
            parent = parent[k]
        for value in candidates:
            parent[path[-1]] = value
            if path not in _error_paths(validator, cfg):
                break
        else:
            parent[path[-1]] = text
    return cfg


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate_config(cfg: dict, schema_path: str | Path = SCHEMA) -> dict:
    """Raise ConfigError naming every offending key; return ``cfg`` unchanged if it is valid."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(read_yaml(schema_path))
    problems = []
    for e in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        where = _path(e)
        if e.validator == "additionalProperties":
            extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            for k in extra:
                key = f"{where}.{k}" if where != "<top level>" else k
                problems.append(
                    f"unknown config key '{key}' (allowed here: {', '.join(sorted(e.schema.get('properties', {})))})"
                )
        else:
            problems.append(f"config key '{where}': {e.message}")
    problems.extend(_cross_checks(cfg))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return cfg


def expected_results_root(profile: str) -> str:
    return "results" if profile == "toy" else f"results/{profile}"


def _cross_checks(cfg: dict) -> list[str]:
    """Rules JSON Schema cannot say simply."""
    out = []
    profile = cfg.get("profile")
    pv = cfg.get("pathvars", {})
    if isinstance(profile, str) and isinstance(pv, dict):
        for name in ("results", "logs", "benchmarks"):
            want = expected_results_root(profile).replace("results", name, 1)
            if pv.get(name) not in (None, want):
                out.append(
                    f"config key 'pathvars.{name}' is '{pv.get(name)}' but profile '{profile}' writes under "
                    f"'{want}' (each profile keeps its own output root so artefacts never mix)"
                )
    shapes = cfg.get("shapes")
    if isinstance(shapes, dict):
        counts, weights = shapes.get("object_counts"), shapes.get("object_count_weights")
        if isinstance(counts, list) and isinstance(weights, list) and len(counts) != len(weights):
            out.append("config keys 'shapes.object_counts' and 'shapes.object_count_weights' differ in length")
    arena = cfg.get("arena")
    if isinstance(arena, dict) and arena.get("judge") in ("local", "api") and not arena.get("model"):
        out.append(f"config key 'arena.model' is null but arena.judge {arena['judge']} needs the judge VLM")
    models = cfg.get("models")
    if profile == "paper" and isinstance(models, dict) and not models.get("inception"):
        out.append(
            "config key 'models.inception' is null but the paper profile's FID (Table 1) needs the Inception-v3 "
            "TorchScript file (config/paper.yaml has its download)"
        )
    return out


# The paper's stated compute budget (section 4: under 1,000 GPU-hours in all).
PAPER_BUDGET_GPU_HOURS = 1000


# stage-1 keys read only where the trained encoder is used (reconstruct, diagnose_stage1, stage 2's
# refinement), not by its training
STAGE1_INFERENCE = (
    "reconstruct_guidance",
    "reconstruct_steps",
    "refine_steps",
    "refine_lr",
    "refine_draws",
    "sampler",
    "eval_timesteps",
    "n_eval_images",
)


def stage_params(cfg: dict, name: str, variant: str | None = None, **extra) -> dict:
    """What a stage receives as ``--params``: the rules, the ``vlv config`` command, the modules'
    docstring examples and the benchmarks all take it from here.

    ``name`` is a config section (``subset``, ``evaluation``, ...: the section as it is) or one of the
    stages whose parameters gather more than one section:

    - ``stage1``: the section with the values the stage-1 variant ``variant`` changes (``nq16``, ...),
      less ``STAGE1_INFERENCE`` (training never reads them, so changing them does not train again);
    - ``reconstruct``: the whole section with the variant's values (reconstruct, diagnose_stage1);
    - ``stage2``: the section with the trainable set and seed the captioner name ``variant`` may
      change (for the direct captioner, ``direct_pairs<P>``, with ``stage2.direct`` in place of its values), plus
      what stage 2 inherits from stage 1 (``route``, ``num_queries``; for VLV captioners the
      ``refine_*`` settings when ``stage1.refine_steps`` > 0 and stage 2 leaves the encoder frozen);
    - ``pretrain_toy.<model>``: the stand-in's section with the Shapes world beside it;
      ``pretrain_toy.benchmark``: the stand-ins' benchmark settings, likewise;
    - ``reconstruction_fid``, ``compose``: what evaluate_fid and compose need of stage 1;
    - ``coco``, ``laion``, ``download`` (``variant``: a ``data.files`` key): the paper data's;
    - ``cost``: the cost report's scale (``extra``: ``captioners``, the number of captioners, and
      ``gpus``, the GPUs of each training stage).
    """
    from vlv.variants import ENCODER_FROZEN, parse_captioner, stage1_overrides

    s1, s2, e = cfg["stage1"], cfg["stage2"], cfg["evaluation"]
    if name in ("stage1", "reconstruct"):
        s1 = {**s1, **stage1_overrides(variant or "encoder")}
        return s1 if name == "reconstruct" else {k: v for k, v in s1.items() if k not in STAGE1_INFERENCE}
    if name == "stage2":
        captioner = parse_captioner(variant or "vlv_pairs100") or {}
        base = {k: v for k, v in s2.items() if k != "direct"}
        if captioner.get("init") == "direct":
            base.update(s2["direct"])
        else:
            base["trainable"] = captioner.get("trainable") or s2["trainable"]
        if captioner.get("seed") is not None:
            base["seed"] = captioner["seed"]
        base.update(route=s1["route"], num_queries=s1["num_queries"])
        refines = captioner.get("init") == "vlv" and base["trainable"] in ENCODER_FROZEN
        if refines and s1["refine_steps"] > 0:  # the frozen stage-1 encoder's embeddings, refined on each image
            base.update({k: s1[k] for k in ("refine_steps", "refine_lr", "refine_draws")})
        return base
    if name.startswith("pretrain_toy.") and "pretrain_toy" not in cfg:
        raise ConfigError(f"'{name}': the config has no pretrain_toy section (it is in config/pretrain_toy.yaml)")
    if name == "pretrain_toy.benchmark":
        return {"shapes": cfg["shapes"], "benchmark": cfg["pretrain_toy"]["benchmark"]}
    if name.startswith("pretrain_toy."):
        return {"shapes": cfg["shapes"], **section(cfg, name)}
    if name == "reconstruction_fid":
        return {"renderer_guidance": s1["reconstruct_guidance"], "n_images": s1["n_eval_images"], "seed": e["seed"]}
    if name == "compose":
        return {
            **cfg["ablations"]["compose"],
            "route": s1["route"],
            "steps": s1["reconstruct_steps"],
            "seed": e["seed"],
        }
    if name in ("download", "laion", "coco"):
        return paper_data_params(cfg, name, variant)
    if name == "subset":
        return {**cfg["subset"], "max_bad_share": cfg["data"]["max_bad_share"]}
    if name == "cost":
        return cost_params(cfg, extra["captioners"], extra["gpus"])
    value = section(cfg, name)
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{name}' is a value, not a section")
    return value


def paper_data_params(cfg: dict, name: str, variant: str | None = None) -> dict:
    """The paper data's stage parameters: ``download`` (``variant``: a ``data.files`` key), ``laion``
    (its section with the image size and the subset's shape limits) and ``coco``."""
    d, e = cfg["data"], cfg["evaluation"]
    if name == "download":
        return d["files"][variant]
    if name == "laion":
        sub = cfg["subset"]
        return {
            **d["laion"],
            "image_size": d["image_size"],
            **{k: sub[k] for k in ("min_side", "min_aspect", "max_aspect")},
        }
    return {
        "n_images": e["n_images"],
        "seed": e["seed"],
        "shard_size": d["coco_shard_size"],
        "image_size": d["image_size"],
        "max_bad_share": d["max_bad_share"],
    }


def cost_params(cfg: dict, n_captioners: int, gpus: dict) -> dict:
    """The cost report's scale: the items each stage handles and the GPUs it runs on."""
    s1, s2, e = cfg["stage1"], cfg["stage2"], cfg["evaluation"]
    pairs = cfg["data"]["pairs"] or cfg["shapes"]["splits"]["pairs"]["n"]
    scale = {
        "subset": {"items": None, "gpus": 1},
        "synthesize_captions": {"items": pairs, "gpus": 1},
        "distill_stage1": {"items": s1["steps"] * s1["batch_size"], "gpus": max(gpus["stage1"], 1)},
        "finetune_stage2": {"items": s2["steps"] * s2["batch_size"], "gpus": max(gpus["stage2"], 1)},
        "caption": {"items": e["n_images"] * n_captioners, "gpus": 1},
        "render_captions": {"items": e["n_images"] * len(e["renderer_guidance"]) * n_captioners, "gpus": 1},
    }
    return {"budget_gpu_hours": PAPER_BUDGET_GPU_HOURS, "scale": scale}


def section(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"config has no key '{dotted}'")
        node = node[part]
    return node


def key_comment(dotted: str, paths=TOY_FILES) -> str:
    """The comment that explains a key in the commented config files (the first that has the key): the
    comment lines right above its line (and a comment at the end of it), found by following the dotted
    path through the indentation."""
    for path in paths:
        try:
            return _key_comment(dotted, Path(path).read_text().splitlines())
        except ConfigError:
            continue
    raise ConfigError(f"{', '.join(Path(p).name for p in paths)}: no key '{dotted}'")


def _key_comment(dotted: str, lines: list[str]) -> str:
    parent, start, found = -1, 0, None  # the parent key's indentation; where its block starts
    for part in dotted.split("."):
        child = None  # the indentation of the parent's keys: that of the first key in its block
        for i in range(start, len(lines)):
            stripped = lines[i].lstrip()
            if not stripped or stripped.startswith("#"):
                continue
            depth = len(lines[i]) - len(stripped)
            if depth <= parent:
                break
            child = depth if child is None else child
            if depth == child and stripped.startswith(f"{part}:"):
                parent, start, found = depth, i + 1, i
                break
        else:
            found = None
        if found is None or start != found + 1 or parent != child:
            raise ConfigError(f"no key '{dotted}'")
    above, i = [], found - 1
    while i >= 0 and lines[i].lstrip().startswith("#"):
        above.insert(0, lines[i].lstrip()[1:].strip())
        i -= 1
    inline = lines[found].partition(" #")[2].strip()
    return " ".join([*above, inline]).strip()


def key_schema(dotted: str, schema_path: str | Path = SCHEMA) -> dict:
    """The schema of one key (references followed)."""
    schema = read_yaml(schema_path)
    node = schema
    for part in dotted.split("."):
        while "$ref" in node:
            node = schema["$defs"][node["$ref"].rpartition("/")[2]]
        node = node.get("properties", {}).get(part)
        if node is None:
            raise ConfigError(f"the schema has no key '{dotted}'")
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rpartition("/")[2]]
    return node


def explain(cfg: dict, dotted: str) -> str:
    """What ``vlv config --explain KEY`` prints: the key's comment, its current value and what the schema allows."""
    rule = {k: v for k, v in key_schema(dotted).items() if k not in ("properties", "required", "additionalProperties")}
    value = section(cfg, dotted)
    shown = json.dumps(value) if not isinstance(value, dict) else "{" + ", ".join(value) + "}"
    comment, parts = key_comment(dotted), dotted.split(".")
    while not comment and len(parts) > 1:  # a key explained with its siblings: the section's comment
        parts.pop()
        above = key_comment(".".join(parts))
        comment = above and f"(in {'.'.join(parts)}) {above}"
    return "\n".join([f"{dotted}: {shown}", f"  {comment or '(no comment)'}", f"  allowed: {json.dumps(rule)}"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Print what a stage receives as --params (a validated config section, or a stage's gathered "
        "parameters: see stage_params), as JSON."
    )
    p.add_argument(
        "key", nargs="?", default=None, help="e.g. stage2, pretrain_toy.t2i, subset (default: the whole config)"
    )
    p.add_argument(
        "--variant", default=None, help="a stage-1 variant (nq16, data10) or a captioner name (vlv_pairs25-mlp)"
    )
    p.add_argument("--configfile", nargs="+", default=[str(f) for f in TOY_FILES])
    p.add_argument(
        "--explain", action="store_true", help="what KEY means (the config's comment), its value, its schema"
    )
    args = p.parse_args(argv)
    try:
        cfg = validate_config(load_config(*args.configfile))
        if args.explain:
            print(explain(cfg, args.key))
            return 0
        print(json.dumps(cfg if args.key is None else stage_params(cfg, args.key, args.variant), sort_keys=True))
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
