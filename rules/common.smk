# Helpers shared by all stages. Config validation, config sections as JSON params, code inputs.

import json
import os
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


def work_dir(stage):
    """Where a training stage keeps its resumable checkpoints (per profile, never a declared output)."""
    return f"work/{config['profile']}/{stage}"


def final_outputs():
    return [
        "<results>/reconstruct/metrics.json",
        "<results>/subset/subset.json",
        "<results>/generate_shapes/pairs",
        "<results>/generate_shapes/eval",
    ]
