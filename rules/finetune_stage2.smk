# Stage 2: the caption decoder, from the stage-1 encoder (init "vlv") or from the encoder before
# distillation (init "no_stage1": the paper's Table 7; init "direct": the direct captioner, with
# its own recipe stage2.direct), on a share of the pair set (percent). {name} is
# <init>_pairs<percent>[-<trainable>][-llm_<key>] (vlv/variants.py): the suffixes are ablations.


rule finetune_stage2:
    input:
        accelerate=launch_input("stage2"),
        launch_code=launch_code("stage2"),
        code=code("vlv.stages.finetune_stage2"),
        images=split_dir("pairs"),
        captions="<results>/synthesize_captions/captions.jsonl",
        encoder=stage2_encoder,
        t2i=model_input("t2i"),
        llm=stage2_llm_input,
    output:
        report(
            directory("<results>/finetune_stage2/{name}"),
            patterns=["{curve}.png"],
            category="Training curves",
        ),
    log:
        "<logs>/finetune_stage2/{name}.log",
    benchmark:
        "<benchmarks>/finetune_stage2/{name}.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=launch_gpus("stage2"),
        nodes=launch_machines("stage2"),
    params:
        launch=launcher("stage2"),
        cfg=lambda wildcards: params_json("stage2", wildcards.name),
        init=lambda wildcards: parse_captioner(wildcards.name)["init"],
        encoder=stage2_encoder_arg,
        t2i=model_arg("t2i"),
        llm=stage2_llm_arg,
        fraction=lambda wildcards: parse_captioner(wildcards.name)["percent"] / 100,
        workers=config["data"]["loader_workers"],
        work=lambda wildcards: work_dir(f"finetune_stage2/{wildcards.name}"),
    shell:
        "{params.launch} vlv.stages.finetune_stage2 --params {params.cfg:q} --init {params.init} "
        "--encoder {params.encoder} --t2i {params.t2i} --llm {params.llm} --images {input.images} "
        "--captions {input.captions} --pairs-fraction {params.fraction} --out {output} "
        "--work {params.work} --workers {params.workers} > {log} 2>&1"
