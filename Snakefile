# VLV: the whole pipeline, from raw images to every table of the paper.
#
#   snakemake --cores 2 all            toy profile (config.yaml), offline, CPU
#   snakemake --cores 2 pretrain_toy   retrain the toy stand-in models (outside `all`)
#   snakemake --cores 2 data_efficiency   VLV against the direct captioner on fewer pairs
#   snakemake --cores 2 ablations      Tables 4 and 5 and the composition demo (outside `all`)
#   snakemake --cores 2 seeds          the headline figures over seeds (outside `all`)
#   snakemake --configfile config/paper.yaml --cores N all    paper profile
#
# This file only loads the config, validates it and includes one rule file per stage.


from snakemake.utils import min_version

min_version("9.12")


configfile: "config.yaml"
configfile: "config/pretrain_toy.yaml"


envvars:
    "PATH",


include: "rules/common.smk"


wildcard_constraints:
    split="pool|pairs|eval",
    t2i_name="t2i|renderer",
    lm_name="lm|lm_small|lm_large",
    s1=STAGE1_PATTERN,
    name=CAPTIONER_PATTERN,


include: "rules/generate_shapes.smk"


if config["data"]["source"] == "download":

    include: "rules/download.smk"


include: "rules/pretrain_toy.smk"
include: "rules/subset.smk"
include: "rules/distill_stage1.smk"
include: "rules/synthesize_captions.smk"
include: "rules/finetune_stage2.smk"
include: "rules/caption.smk"
include: "rules/evaluate.smk"
include: "rules/tables.smk"
include: "rules/ablations.smk"


# Preflight (not in a dry run): a non-toy profile stops here, with `vlv doctor`'s report, when a
# model, data set or tool it needs is missing and no rule can make it (VLV_SKIP_PREFLIGHT=1 skips).
onstart:
    if config["profile"] != "toy":
        report = preflight(config, use_conda=uses_conda())
        if report:
            raise WorkflowError(f"preflight failed; nothing was run.\n{report}")


rule all:
    default_target: True
    input:
        final_outputs(),


# The paper's central claim at toy scale: VLV against the direct captioner on a share of the pairs
# (outside `all`: two more stage-2 trainings per share).
rule data_efficiency:
    input:
        "<results>/evaluate/captions_shapes_data_efficiency.json",


# The headline figures with their spread over seeds (outside `all`: stage 1 and stage 2 again for
# each seed of seeds.runs but the main run's).
rule seeds:
    input:
        "<results>/tables/seeds.csv",


# The paper's Tables 4 and 5 and the composition demo (outside `all`: four more stage-1 encoders and
# four more captioners; times in README).
rule ablations:
    input:
        ablation_outputs(),
