# The Shapes world (toy data): one rule, one split per job.


rule generate_shapes:
    input:
        code=code("vlv.stages.generate_shapes"),
    output:
        directory("<results>/generate_shapes/{split}"),
    log:
        "<logs>/generate_shapes/{split}.log",
    benchmark:
        "<benchmarks>/generate_shapes/{split}.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=params_json("shapes"),
    shell:
        "python -m vlv.stages.generate_shapes --params {params.cfg:q} --split {wildcards.split} --out {output} > {log} 2>&1"
