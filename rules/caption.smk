# Captions of the evaluation split from every captioner (VLV, no-stage-1, teacher, references and,
# in the paper profile, open VLMs).


rule caption:
    input:
        code=code("vlv.stages.caption"),
        images=split_dir("eval"),
        model=captioner_inputs,
    output:
        "<results>/caption/{captioner}.jsonl",
    log:
        "<logs>/caption/{captioner}.log",
    benchmark:
        "<benchmarks>/caption/{captioner}.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        # the captioner's own stage-2 params: a VLV captioner's carry its refinement, the others' do not
        cfg=lambda wildcards: params_json("stage2", wildcards.captioner),
        teacher=params_json("teacher"),
        shapes=shapes_arg(),
        captioner=captioner_args,
        n_images=config["evaluation"]["n_images"],
    shell:
        "python -m vlv.stages.caption --params {params.cfg:q} --teacher {params.teacher:q} {params.captioner} "
        "{params.shapes} --images {input.images} --n-images {params.n_images} --out {output} > {log} 2>&1"
