# Helpers shared by all stages: config validation, input functions and paths. What a stage receives as
# --params is built by vlv.config.stage_params (the rules only turn it into JSON).

import json
import os
import re
import shlex
import sys

sys.path.insert(0, workflow.basedir)
# Jobs run `python -m vlv...`: make that the interpreter running Snakemake (the project's venv),
# whether or not the venv is activated.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

from snakemake.settings.types import DeploymentMethod

from vlv.code_inputs import module_files
from vlv.config import ConfigError, stage_params, typed_overrides, validate_config
from vlv.doctor import preflight
from vlv.models.hub import is_local_model
from vlv.variants import (
    CAPTIONER_PATTERN,
    STAGE1_PATTERN,
    captioner_name,
    parse_captioner,
    seed_captioner,
    seed_stage1,
    stage1_overrides,
)

try:
    validate_config(typed_overrides(config, workflow.config_settings.config))
except ConfigError as e:
    raise WorkflowError(str(e))


def params_json(name, variant=None):
    """A stage's --params (vlv.config.stage_params) as JSON."""
    return json.dumps(stage_params(config, name, variant), sort_keys=True)


def code(module):
    """The source files the rule's module runs (it and every vlv module it imports), as inputs, so
    that editing any of them reruns the stage."""
    return list(module_files(module))


def model_input(name):
    """A model folder as an input when it is local (or made by a rule); nothing for a hub id."""
    value = config["models"][name]
    return [value] if is_local_model(value) else []


def model_arg(name):
    """The model argument of a job: its input folder when local, else the hub id from the config."""

    def arg(wildcards, input):
        return str(getattr(input, name)) or config["models"][name]

    return arg


def inception_input():
    """The Inception-v3 file of the standard FID as an input (paper profile); nothing for the toy
    profile, whose Fréchet distance runs on the toy CLIP's image tower."""
    value = config["models"].get("inception")
    return [value] if value else []


def inception_arg(wildcards, input):
    """--inception-weights, and its pinned SHA-256 where data.files pins the file (checked at load)."""
    if not input.inception:
        return ""
    path = str(input.inception)
    pinned = config["data"].get("files", {}).get(os.path.basename(path), {}).get("sha256")
    digest = f" --inception-sha256 {pinned}" if pinned else ""
    return f"--inception-weights {shlex.quote(path)}{digest}"


def local_model_input(section, kind):
    """``config[section]["model"]`` as an input when ``kind`` (teacher.backend, arena.judge) is local
    and the model a folder; nothing for the oracle, the exact judge, an API or a hub id."""
    s = config[section]
    return [s["model"]] if s[kind] == "local" and is_local_model(s["model"]) else []


def shapes_arg():
    """``--shapes JSON`` in the toy profile (scene graphs and the oracle); nothing in the paper profile."""
    if config["profile"] != "toy":
        return ""
    return f"--shapes {shlex.quote(json.dumps(config['shapes'], sort_keys=True))}"


def work_dir(stage):
    """Where a training stage keeps its resumable checkpoints (per profile, never a declared output)."""
    return f"work/{config['profile']}/{stage}"


def stage2_llm(wildcards):
    """The causal LM of a captioner: models.llm, or ablations.llm.<key> for an ``-llm_<key>`` variant."""
    key = parse_captioner(wildcards.name)["llm"]
    if key is None:
        return config["models"]["llm"]
    models = {e["name"]: e["model"] for e in config["ablations"]["llm"]}
    if key not in models:
        raise WorkflowError(f"captioner {wildcards.name}: no causal LM '{key}' in ablations.llm")
    return models[key] or config["models"]["llm"]


def stage2_llm_input(wildcards):
    value = stage2_llm(wildcards)
    return [value] if is_local_model(value) else []


def stage2_llm_arg(wildcards, input):
    return str(input.llm) or stage2_llm(wildcards)


def captioners(group="main"):
    """The captioners an evaluation compares (names of results/caption/<name>.jsonl). ``main``: the
    references, the teacher, VLV, no-stage-1, the direct captioner and the open VLMs;
    ``data_efficiency``: VLV and the direct captioner on the whole pair set and on each share in
    stage2.pair_percents.
    """
    if group == "data_efficiency":
        percents = [100, *config["stage2"]["pair_percents"]]
        return [f"{init}_pairs{pct}" for pct in percents for init in ("vlv", "direct")]
    if group == "ablations":
        groups = ablation_captioners()
        return list(dict.fromkeys(groups["trainable"] + groups["llm"]))
    if group == "seeds":
        return [
            seed_captioner(i, s, main_seed())
            for s in config["seeds"]["runs"]
            for i in ("vlv", "direct")
        ]
    names = ["reference", "teacher", "vlv_pairs100", "no_stage1_pairs100", "direct_pairs100"]
    return names + open_captioners()


def main_seed():
    """The seed of the main run (``all``) when stage 1 and stage 2 share it; otherwise None, and
    every run of the ``seeds`` target is its own."""
    s1, s2 = config["stage1"]["seed"], config["stage2"]["seed"]
    return s1 if s1 == s2 else None


def seed_outputs():
    """What the ``seeds`` target reads for each seed: its stage-1 reconstructions and, per captioner
    (VLV, direct), the caption -> image distance, the arena and VQA scores; and the judge's file."""
    main = config["stage1"]["seed"]
    runs = config["seeds"]["runs"]
    names = captioners("seeds")
    return {
        "reconstruct": [
            results_path("reconstruct", seed_stage1(s, main), "metrics.json") for s in runs
        ],
        "finetune": [results_path("finetune_stage2", n) for n in names],
        "fid": [results_path("evaluate", "fid", f"{n}.json") for n in names],
        "arena": [results_path("evaluate", "arena", f"{n}.json") for n in names],
        "vqa": [results_path("evaluate", "vqa", f"{n}.json") for n in names],
        "judge": results_path("evaluate", "captions_shapes_seeds.json"),
    }


def open_captioners():
    """Names of the open captioners compared (a null entry is left out)."""
    return [n for n, m in config["stage2"]["open_captioners"].items() if m is not None]


def ablation_captioners():
    """Captioner names per stage-2 ablation, the main VLV captioner (vlv_pairs100) in its place."""
    main_trainable, a = config["stage2"]["trainable"], config["ablations"]
    trainable = sorted({*a["trainable"], main_trainable}, key=TRAINABLE_ORDER.index)
    return {
        "trainable": [
            captioner_name("vlv", 100, None if t == main_trainable else t) for t in trainable
        ],
        "llm": [
            captioner_name("vlv", 100, llm=e["name"]) if e["model"] else "vlv_pairs100"
            for e in a["llm"]
        ],
    }


TRAINABLE_ORDER = ["mlp", "mlp_llm", "mlp_llm_encoder"]


def ablation_stage1():
    """Stage-1 variants per ablation, the main encoder in its place (by number / share)."""
    s1, a = config["stage1"], config["ablations"]
    nq = sorted({*a["num_queries"], s1["num_queries"]})
    data = sorted({*a["stage1_data_percents"], s1["data_percent"]})
    return {
        "num_queries": ["encoder" if n == s1["num_queries"] else f"nq{n}" for n in nq],
        "data": ["encoder" if d == s1["data_percent"] else f"data{d}" for d in data],
    }


def results_path(*parts):
    """A path under the profile's results root, for input functions (pathvars are not expanded there)."""
    return os.path.join(config["pathvars"]["results"], *parts)


def stage2_encoder(wildcards):
    captioner = parse_captioner(wildcards.name)
    if captioner["init"] == "vlv":
        seed = captioner["seed"]
        main_seed = config["stage1"]["seed"]
        return [
            results_path(
                "distill_stage1", seed_stage1(main_seed if seed is None else seed, main_seed)
            )
        ]
    return model_input("vision_encoder")


def stage2_encoder_arg(wildcards, input):
    return str(input.encoder) or config["models"]["vision_encoder"]


def captioner_inputs(wildcards):
    name = wildcards.captioner
    if parse_captioner(name):
        return [results_path("finetune_stage2", name)]
    if name in config["stage2"]["open_captioners"]:
        value = config["stage2"]["open_captioners"][name]
        return [value] if is_local_model(value) else []
    if name == "teacher":
        return local_model_input("teacher", "backend")
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


def vqa_dataset():
    """The label of the main question set's rows (further sets name their own: vqa.more)."""
    if config["profile"] == "toy":
        return evaluation_dataset()
    return f"VQAv2 val on the evaluation images ({config['evaluation']['n_images']} images)"


def final_outputs():
    out = [
        "<results>/reconstruct/encoder/metrics.json",
        "<results>/subset/subset.json",
        split_dir("pairs"),
        split_dir("eval"),
        "<results>/tables/coco.csv",
        "<results>/tables/vqa.csv",
        "<results>/tables/no_stage1.csv",
    ]
    out += [f"<results>/caption/{name}.jsonl" for name in captioners()]
    out.append("<results>/tables/arena.csv")
    if config["profile"] == "toy":
        out.append("<results>/evaluate/captions_shapes_main.json")
        out.append("<results>/tables/spatial.csv")
    return out


def ablation_outputs():
    """What the `ablations` target builds: Tables 4 and 5 and the composition demo."""
    out = ["<results>/tables/ablations.csv", "<results>/tables/scaling.csv"]
    if config["profile"] == "toy":
        out.append("<results>/compose/compose.json")
    return out


def judge_input(group):
    """The Shapes judge's scores of a captioner group (toy profile; the paper profile has no judge)."""
    if config["profile"] != "toy":
        return []
    return [results_path("evaluate", f"captions_shapes_{group}.json")]


def judge_arg(wildcards, input):
    return f"--judge {input.judge}" if input.judge else ""


def split_dir(split):
    """The shard folder of a split: the generated Shapes split (data.source shapes), or in the paper
    profile COCO 2014 val (eval), the LAION pool (pool) and stage 2's sample of it (pairs)."""
    if config["data"]["source"] == "shapes":
        return f"<results>/generate_shapes/{split}"
    return {
        "eval": "<results>/prepare_coco/eval",
        "pool": "<results>/download_laion/pool",
        "pairs": "<results>/download_laion/pairs",
    }[split]


def launcher(stage):
    """The start of a training job's command: ``python -m`` (launch.<stage> null),
    ``accelerate launch`` with the committed accelerate config and its number of processes, or,
    on several machines, one ``vlv.launch`` per machine started by ``srun`` inside the job."""
    spec = config["launch"][stage]
    if spec is None:
        return "python -m"
    machines = launch_machines(stage)
    if machines > 1:
        return (
            f"srun --nodes={machines} --ntasks-per-node=1 python -m vlv.launch --config {spec['config']} "
            f"--processes {spec['processes']} --machines {machines} -m"
        )
    return (
        f"accelerate launch --config_file {spec['config']} --num_processes {spec['processes']} -m"
    )


def launch_input(stage):
    spec = config["launch"][stage]
    return [spec["config"]] if spec else []


def launch_gpus(stage):
    """GPUs of a training job, all machines together (SLURM's --gpus counts the whole job)."""
    spec = config["launch"][stage]
    return spec["processes"] * launch_machines(stage) if spec else 0


def launch_machines(stage):
    spec = config["launch"][stage]
    return spec.get("machines", 1) if spec else 1


def launch_code(stage):
    """vlv/launch.py as an input of a training job that starts through it (several machines)."""
    return code("vlv.launch") if launch_machines(stage) > 1 else []


def uses_conda():
    """True when Snakemake runs with --use-conda (img2dataset then comes from envs/img2dataset.yml)."""
    return DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method


def cost_json():
    """The cost report's scale: what each costed stage processes, on how many GPUs."""
    gpus = {"stage1": launch_gpus("stage1"), "stage2": launch_gpus("stage2")}
    return json.dumps(
        stage_params(config, "cost", captioners=len(captioners()), gpus=gpus), sort_keys=True
    )


def cost_manifests(wildcards, input):
    """STAGE=manifest arguments of cost_report, from its inputs."""
    d = os.path.dirname
    paths = {
        "subset": os.path.join(d(input.subset), "manifest.json"),
        "synthesize_captions": input.teacher,
        "distill_stage1": os.path.join(input.stage1, "manifest.json"),
        "finetune_stage2": os.path.join(input.stage2, "manifest.json"),
        "caption": input.caption.removesuffix(".jsonl") + ".manifest.json",
        "render_captions": input.render.removesuffix(".tar") + ".manifest.json",
    }
    return " ".join(f"{k}={v}" for k, v in paths.items())
