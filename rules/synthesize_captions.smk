# Teacher captions for the stage-2 pair set. The append-only file under work/<profile>/ survives a
# failed or stopped job; the rerun captions only what is missing.


rule synthesize_captions:
    input:
        code=code("vlv.stages.synthesize_captions"),
        images=split_dir("pairs"),
        teacher=local_model_input("teacher", "backend"),
    output:
        captions="<results>/synthesize_captions/captions.jsonl",
        manifest="<results>/synthesize_captions/manifest.json",
    log:
        "<logs>/synthesize_captions/synthesize_captions.log",
    benchmark:
        "<benchmarks>/synthesize_captions/synthesize_captions.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        cfg=params_json("teacher"),
        shapes=params_json("shapes"),
        work=os.path.join(work_dir("synthesize_captions"), "captions.jsonl"),
    shell:
        "python -m vlv.stages.synthesize_captions --params {params.cfg:q} --shapes {params.shapes:q} "
        "--images {input.images} --out {output.captions} --work {params.work} > {log} 2>&1"
