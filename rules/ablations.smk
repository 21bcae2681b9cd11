# Ablations and scaling (the paper's Tables 4 and 5) and the composition demo (section 4.4.2).
# Every variant is an artefact of the ordinary rules (distill_stage1/{s1}, finetune_stage2/{name},
# caption, render_captions, evaluate_fid, evaluate_captions_shapes); these rules add the
# reconstruction distance of a stage-1 variant, the composition, and the two tables.


rule evaluate_reconstruction_fid:
    input:
        code=code("vlv.evaluate.evaluate_fid"),
        renders="<results>/reconstruct/{s1}/reconstructions.tar",
        images=split_dir("eval"),
        clip=model_input("clip"),
        inception=inception_input(),
    output:
        "<results>/evaluate/reconstruction_fid/{s1}.json",
    log:
        "<logs>/evaluate/reconstruction_fid/{s1}.log",
    benchmark:
        "<benchmarks>/evaluate/reconstruction_fid/{s1}.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=params_json("reconstruction_fid"),
        clip=model_arg("clip"),
        inception=inception_arg,
        profile=config["profile"],
    shell:
        "python -m vlv.evaluate.evaluate_fid --params {params.cfg:q} --profile {params.profile} "
        "--clip {params.clip} {params.inception} --images {input.images} --renders {input.renders} "
        "--out {output} > {log} 2>&1"


rule compose:
    input:
        code=code("vlv.stages.compose"),
        encoder="<results>/distill_stage1/encoder",
        images=split_dir("eval"),
        t2i=model_input("t2i"),
    output:
        json="<results>/compose/compose.json",
        grid=report("<results>/compose/grid.png", category="Ablations"),
    log:
        "<logs>/compose/compose.log",
    benchmark:
        "<benchmarks>/compose/compose.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        cfg=params_json("compose"),
        shapes=shapes_arg(),
        t2i=model_arg("t2i"),
        out=subpath(output.json, parent=True),
    shell:
        "python -m vlv.stages.compose --params {params.cfg:q} --encoder {input.encoder} --decoder {params.t2i} "
        "--images {input.images} {params.shapes} --out {params.out} > {log} 2>&1"


rule table_ablations:
    input:
        code=code("vlv.stages.tables"),
        recon=expand(
            "<results>/evaluate/reconstruction_fid/{s1}.json",
            s1=ablation_stage1()["num_queries"],
        ),
        recon_metrics=expand(
            "<results>/reconstruct/{s1}/metrics.json", s1=ablation_stage1()["num_queries"]
        ),
        fid=expand(
            "<results>/evaluate/fid/{captioner}.json",
            captioner=ablation_captioners()["trainable"],
        ),
        finetune=expand(
            "<results>/finetune_stage2/{captioner}",
            captioner=ablation_captioners()["trainable"],
        ),
        judge=judge_input("ablations"),
    output:
        table=report("<results>/tables/ablations.csv", category="Tables"),
        metrics="<results>/tables/ablations.json",
        figure=report("<results>/tables/ablations.png", category="Tables"),
    log:
        "<logs>/tables/ablations.log",
    benchmark:
        "<benchmarks>/tables/ablations.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        profile=config["profile"],
        dataset=evaluation_dataset(),
        judge=judge_arg,
    shell:
        "python -m vlv.stages.tables ablations --profile {params.profile} --dataset {params.dataset:q} "
        "--reconstruction-fid {input.recon} --reconstruct {input.recon_metrics} --fid {input.fid} "
        "--finetune {input.finetune} {params.judge} --out {output.table} --figure {output.figure} > {log} 2>&1"


rule table_scaling:
    input:
        code=code("vlv.stages.tables"),
        recon=expand(
            "<results>/evaluate/reconstruction_fid/{s1}.json", s1=ablation_stage1()["data"]
        ),
        recon_metrics=expand(
            "<results>/reconstruct/{s1}/metrics.json", s1=ablation_stage1()["data"]
        ),
        fid=expand(
            "<results>/evaluate/fid/{captioner}.json",
            captioner=ablation_captioners()["llm"],
        ),
        finetune=expand(
            "<results>/finetune_stage2/{captioner}",
            captioner=ablation_captioners()["llm"],
        ),
        judge=judge_input("ablations"),
    output:
        table=report("<results>/tables/scaling.csv", category="Tables"),
        metrics="<results>/tables/scaling.json",
        figure=report("<results>/tables/scaling.png", category="Tables"),
    log:
        "<logs>/tables/scaling.log",
    benchmark:
        "<benchmarks>/tables/scaling.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        profile=config["profile"],
        dataset=evaluation_dataset(),
        judge=judge_arg,
    shell:
        "python -m vlv.stages.tables scaling --profile {params.profile} --dataset {params.dataset:q} "
        "--reconstruction-fid {input.recon} --reconstruct {input.recon_metrics} --fid {input.fid} "
        "--finetune {input.finetune} {params.judge} --out {output.table} --figure {output.figure} > {log} 2>&1"
