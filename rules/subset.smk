# Stage-1 image subset: validity checks, CLIP-score ranking, top-N; every rejection has a reason.


rule subset:
    input:
        code=code("subset", "data/shards"),
        images="<results>/generate_shapes/pool",
        clip=model_input("clip"),
    output:
        subset="<results>/subset/subset.json",
        manifest="<results>/subset/manifest.json",
    params:
        cfg=cfg_json("subset"),
        clip=config["models"]["clip"],
        out=subpath(output.subset, parent=True),
    log:
        "<logs>/subset/subset.log",
    benchmark:
        "<benchmarks>/subset/subset.tsv"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=30,
    shell:
        "python -m vlv.subset --params {params.cfg:q} --images {input.images} --clip {params.clip} "
        "--out {params.out} > {log} 2>&1"
