# Helpers shared by all stages. Config validation, config sections as JSON params, code inputs.

import json
import os
import shlex
import sys

sys.path.insert(0, workflow.basedir)
# Jobs run `python -m vlv...`: make that the interpreter running Snakemake (the project's venv),
# whether or not the venv is activated.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

from vlv.config import ConfigError, section, validate_config
from vlv.models.hub import is_local_model

try:
    validate_config(config)
except ConfigError as e:
    raise WorkflowError(str(e))


def cfg_json(key, with_shapes=False):
    """A config section as JSON for a stage's --params (optionally with the Shapes world beside it)."""
    value = section(config, key)
    if with_shapes:
        value = {"shapes": config["shapes"], **value}
    return json.dumps(value, sort_keys=True)


def standin_benchmark_json():
    return json.dumps(
        {"shapes": config["shapes"], "benchmark": config["pretrain_toy"]["benchmark"]},
        sort_keys=True,
    )


def code(*modules):
    """Source files of a stage, as inputs, so that editing them reruns the stage."""
    return [f"vlv/{m}.py" for m in modules]


def model_input(name):
    """A model folder as an input when it is local (or made by a rule); nothing for a hub id."""
    value = config["models"][name]
    return [value] if is_local_model(value) else []


def model_arg(name):
    """The model argument of a job: its input folder when local, else the hub id from the config."""

    def arg(wildcards, input):
        return str(getattr(input, name)) or config["models"][name]

    return arg


def teacher_model_input():
    """The teacher VLM folder as an input when it is local; nothing for the oracle or a hub id."""
    t = config["teacher"]
    return [t["model"]] if t["backend"] == "local" and is_local_model(t["model"]) else []


def shapes_arg():
    """``--shapes JSON`` in the toy profile (scene graphs and the oracle); nothing in the paper profile."""
    if config["profile"] != "toy":
        return ""
    return f"--shapes {shlex.quote(json.dumps(config['shapes'], sort_keys=True))}"


def work_dir(stage):
    """Where a training stage keeps its resumable checkpoints (per profile, never a declared output)."""
    return f"work/{config['profile']}/{stage}"


def stage2_json():
    """The stage-2 section plus what it inherits from stage 1 (route and number of queries)."""
    s1 = config["stage1"]
    return json.dumps(
        {**config["stage2"], "route": s1["route"], "num_queries": s1["num_queries"]},
        sort_keys=True,
    )


def captioners(group="main"):
    """The captioners an evaluation compares (names of results/caption/<name>.jsonl). ``main``: the
    references, the teacher, VLV, no-stage-1 and the open VLMs; ``data_efficiency``: VLV and the
    direct (no-stage-1) captioner on the whole pair set and on each share in stage2.pair_percents.
    """
    if group == "data_efficiency":
        percents = [100, *config["stage2"]["pair_percents"]]
        return [f"{init}_pairs{pct}" for pct in percents for init in ("vlv", "no_stage1")]
    names = ["reference", "teacher", "vlv_pairs100", "no_stage1_pairs100"]
    return names + list(config["stage2"]["open_captioners"])


def results_path(*parts):
    """A path under the profile's results root, for input functions (pathvars are not expanded there)."""
    return os.path.join(config["pathvars"]["results"], *parts)


def stage2_encoder(wildcards):
    if wildcards.init == "vlv":
        return [results_path("distill_stage1", "encoder")]
    return model_input("vision_encoder")


def stage2_encoder_arg(wildcards, input):
    return str(input.encoder) or config["models"]["vision_encoder"]


def captioner_inputs(wildcards):
    name = wildcards.captioner
    if name.startswith(("vlv_pairs", "no_stage1_pairs")):
        return [results_path("finetune_stage2", name)]
    if name in config["stage2"]["open_captioners"]:
        value = config["stage2"]["open_captioners"][name]
        return [value] if is_local_model(value) else []
    if name == "teacher":
        return teacher_model_input()
    return []


def captioner_args(wildcards, input):
    name = wildcards.captioner
    if name in ("reference", "teacher"):
        return f"--captioner {name}"
    if name in config["stage2"]["open_captioners"]:
        return f"--captioner vlm --model {input.model or config['stage2']['open_captioners'][name]}"
    return f"--captioner vlv --model {input.model}"


def vqa_questions():
    """The questions of Table 3: a configured file (paper: VQAv2) or made from the scene graphs (toy)."""
    return config["vqa"]["questions"] or results_path("evaluate", "vqa", "questions.jsonl")


def vqa_reader_input():
    """The VQA reader LLM folder as an input when it is local; nothing for the parser or a hub id."""
    v = config["vqa"]
    return [v["model"]] if v["reader"] == "local" and is_local_model(v["model"]) else []


def evaluation_dataset():
    n = config["evaluation"]["n_images"]
    if config["profile"] == "toy":
        return f"Shapes evaluation split ({n} images)"
    return f"MS-COCO 2014 val ({n} images)"


def final_outputs():
    out = [
        "<results>/reconstruct/metrics.json",
        "<results>/subset/subset.json",
        "<results>/generate_shapes/pairs",
        "<results>/generate_shapes/eval",
        "<results>/tables/coco.csv",
    ]
    out += [f"<results>/caption/{name}.jsonl" for name in captioners()]
    if config["profile"] == "toy":
        out.append("<results>/evaluate/captions_shapes_main.json")
        out.append("<results>/tables/spatial.csv")
        out.append("<results>/tables/arena.csv")
        # Paper profile: Table 3 reads VQAv2 questions (vqa.questions), which no rule fetches yet
        # (the download rules of the paper-scale issue); build it with its target once the file is there.
        out.append("<results>/tables/vqa.csv")
    return out
