# The Shapes world (toy data): one rule, one split per job.


rule generate_shapes:
    input:
        code=code("generate_shapes", "shapes/world", "shapes/captions", "shapes/splits", "data/shards"),
    output:
        directory("<results>/generate_shapes/{split}"),
    params:
        cfg=cfg_json("shapes"),
    log:
        "<logs>/generate_shapes/{split}.log",
    benchmark:
        "<benchmarks>/generate_shapes/{split}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m vlv.generate_shapes --params {params.cfg:q} --split {wildcards.split} --out {output} > {log} 2>&1"
