# Stage-1 image subset: validity checks, CLIP-score ranking, top-N; every rejection has a reason.
# Progress is saved per shard under work/<profile>/subset: a stopped job resumes where it stopped.


rule subset:
    input:
        code=code("vlv.stages.subset"),
        images=split_dir("pool"),
        clip=model_input("clip"),
    output:
        subset="<results>/subset/subset.json",
        manifest="<results>/subset/manifest.json",
    log:
        "<logs>/subset/subset.log",
    benchmark:
        "<benchmarks>/subset/subset.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        cfg=params_json("subset"),
        clip=model_arg("clip"),
        out=subpath(output.subset, parent=True),
        work=work_dir("subset"),
    shell:
        "python -m vlv.stages.subset --params {params.cfg:q} --images {input.images} --clip {params.clip} "
        "--out {params.out} --work {params.work} > {log} 2>&1"
