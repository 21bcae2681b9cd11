# Stage 2: the caption decoder, from the stage-1 encoder (init "vlv") or from the encoder before
# distillation (init "no_stage1": the paper's Table 7 and the direct captioner of the
# data-efficiency comparison), on a share of the pair set (percent).


rule finetune_stage2:
    input:
        code=code("finetune_stage2", "models/captioner", "models/vlv_encoder"),
        images="<results>/generate_shapes/pairs",
        captions="<results>/synthesize_captions/captions.jsonl",
        encoder=stage2_encoder,
        t2i=model_input("t2i"),
        llm=model_input("llm"),
    output:
        report(
            directory("<results>/finetune_stage2/{init}_pairs{percent}"),
            patterns=["{curve}.png"],
            category="Training curves",
        ),
    log:
        "<logs>/finetune_stage2/{init}_pairs{percent}.log",
    benchmark:
        "<benchmarks>/finetune_stage2/{init}_pairs{percent}.tsv"
    wildcard_constraints:
        init="vlv|no_stage1",
        percent="[0-9]+",
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=0,
    params:
        cfg=stage2_json(),
        encoder=stage2_encoder_arg,
        t2i=model_arg("t2i"),
        llm=model_arg("llm"),
        fraction=lambda wildcards: int(wildcards.percent) / 100,
        work=lambda wildcards: work_dir(
            f"finetune_stage2/{wildcards.init}_pairs{wildcards.percent}"
        ),
    shell:
        "python -m vlv.finetune_stage2 --params {params.cfg:q} --init {wildcards.init} "
        "--encoder {params.encoder} --t2i {params.t2i} --llm {params.llm} --images {input.images} "
        "--captions {input.captions} --pairs-fraction {params.fraction} --out {output} "
        "--work {params.work} > {log} 2>&1"
