# Stage 1: the VLV encoder distilled through the frozen T2I decoder, then reconstructions.
# {s1} is the encoder: "encoder" (the config as it is) or an ablation variant (nq<N>, data<P>; see
# vlv/variants.py). Checkpoints go to work/<profile>/distill_stage1/{s1} (not a declared output: a
# failed job keeps them and the rerun resumes from the newest).


rule distill_stage1:
    input:
        accelerate=launch_input("stage1"),
        launch_code=launch_code("stage1"),
        code=code("vlv.stages.distill_stage1"),
        images=split_dir("pool"),
        subset="<results>/subset/subset.json",
        vision_encoder=model_input("vision_encoder"),
        t2i=model_input("t2i"),
    output:
        report(
            directory("<results>/distill_stage1/{s1}"),
            patterns=["{curve}.png"],
            category="Training curves",
        ),
    log:
        "<logs>/distill_stage1/{s1}.log",
    benchmark:
        "<benchmarks>/distill_stage1/{s1}.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=launch_gpus("stage1"),
        nodes=launch_machines("stage1"),
    params:
        launch=launcher("stage1"),
        cfg=lambda wildcards: params_json("stage1", wildcards.s1),
        vision_encoder=model_arg("vision_encoder"),
        t2i=model_arg("t2i"),
        workers=config["data"]["loader_workers"],
        work=lambda wildcards: work_dir(f"distill_stage1/{wildcards.s1}"),
    shell:
        "{params.launch} vlv.stages.distill_stage1 --params {params.cfg:q} --images {input.images} "
        "--subset {input.subset} --vision {params.vision_encoder} --decoder {params.t2i} "
        "--out {output} --work {params.work} --workers {params.workers} > {log} 2>&1"


rule reconstruct:
    input:
        code=code("vlv.stages.reconstruct"),
        encoder="<results>/distill_stage1/{s1}",
        images=split_dir("eval"),
        t2i=model_input("t2i"),
    output:
        metrics="<results>/reconstruct/{s1}/metrics.json",
        grid=report("<results>/reconstruct/{s1}/grid.png", category="Stage 1"),
        images="<results>/reconstruct/{s1}/reconstructions.tar",
    log:
        "<logs>/reconstruct/{s1}.log",
    benchmark:
        "<benchmarks>/reconstruct/{s1}.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=lambda wildcards: params_json("reconstruct", wildcards.s1),
        shapes=shapes_arg(),
        t2i=model_arg("t2i"),
        out=subpath(output.metrics, parent=True),
    shell:
        "python -m vlv.stages.reconstruct --params {params.cfg:q} --encoder {input.encoder} "
        "--decoder {params.t2i} --images {input.images} {params.shapes} "
        "--out {params.out} > {log} 2>&1"


rule diagnose_stage1:
    """Issue 23's diagnosis of an encoder (toy profile; not part of `all`): where the denoising loss
    separates captions, by log-SNR and object count, and what per-image free embeddings reach."""
    input:
        code=code("vlv.stages.diagnose_stage1"),
        encoder="<results>/distill_stage1/{s1}",
        images=split_dir("eval"),
        pool=split_dir("pool"),
        subset="<results>/subset/subset.json",
        vision_encoder=model_input("vision_encoder"),
        t2i=model_input("t2i"),
    output:
        signal="<results>/diagnose_stage1/{s1}/signal.json",
        figure=report("<results>/diagnose_stage1/{s1}/signal.png", category="Stage 1"),
    log:
        "<logs>/diagnose_stage1/{s1}.log",
    benchmark:
        "<benchmarks>/diagnose_stage1/{s1}.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cfg=lambda wildcards: params_json("reconstruct", wildcards.s1),
        options=params_json("diagnose_stage1"),
        shapes=shapes_arg(),
        t2i=model_arg("t2i"),
        vision=model_arg("vision_encoder"),
        out=subpath(output.signal, parent=True),
    shell:
        "python -m vlv.stages.diagnose_stage1 --params {params.cfg:q} --encoder {input.encoder} "
        "--decoder {params.t2i} --images {input.images} {params.shapes} --vision {params.vision} "
        "--pool {input.pool} --subset {input.subset} "
        "--options {params.options:q} --out {params.out} > {log} 2>&1"
