# Stage 1: the VLV encoder distilled through the frozen T2I decoder, then reconstructions.
# Checkpoints go to work/<profile>/distill_stage1 (not a declared output: a failed job keeps them
# and the rerun resumes from the newest).


rule distill_stage1:
    input:
        code=code("distill_stage1", "models/vlv_encoder", "models/frozen_decoder"),
        images="<results>/generate_shapes/pool",
        subset="<results>/subset/subset.json",
        vision_encoder=model_input("vision_encoder"),
        t2i=model_input("t2i"),
    output:
        report(
            directory("<results>/distill_stage1/encoder"),
            patterns=["{curve}.png"],
            category="Training curves",
        ),
    log:
        "<logs>/distill_stage1/encoder.log",
    benchmark:
        "<benchmarks>/distill_stage1/encoder.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=0,
    params:
        cfg=cfg_json("stage1"),
        vision_encoder=model_arg("vision_encoder"),
        t2i=model_arg("t2i"),
        work=work_dir("distill_stage1"),
    shell:
        "python -m vlv.distill_stage1 --params {params.cfg:q} --images {input.images} "
        "--subset {input.subset} --vision {params.vision_encoder} --decoder {params.t2i} "
        "--out {output} --work {params.work} > {log} 2>&1"


rule reconstruct:
    input:
        code=code("reconstruct", "models/vlv_encoder", "models/frozen_decoder", "shapes/detect"),
        encoder="<results>/distill_stage1/encoder",
        images="<results>/generate_shapes/eval",
        t2i=model_input("t2i"),
    output:
        metrics="<results>/reconstruct/metrics.json",
        grid=report("<results>/reconstruct/grid.png", category="Stage 1"),
        images="<results>/reconstruct/reconstructions.tar",
    log:
        "<logs>/reconstruct/reconstruct.log",
    benchmark:
        "<benchmarks>/reconstruct/reconstruct.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=cfg_json("stage1"),
        shapes=cfg_json("shapes"),
        t2i=model_arg("t2i"),
        out=subpath(output.metrics, parent=True),
    shell:
        "python -m vlv.reconstruct --params {params.cfg:q} --encoder {input.encoder} "
        "--decoder {params.t2i} --images {input.images} --shapes {params.shapes:q} "
        "--out {params.out} > {log} 2>&1"
