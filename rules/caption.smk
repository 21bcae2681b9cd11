# Captions of the evaluation split from every captioner (VLV, no-stage-1, teacher, references and,
# in the paper profile, open VLMs), then the exact Shapes judge of them (toy profile).


rule caption:
    input:
        code=code("caption", "captioners", "models/captioner"),
        images="<results>/generate_shapes/eval",
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
        cfg=cfg_json("stage2"),
        teacher=cfg_json("teacher"),
        shapes=shapes_arg(),
        captioner=captioner_args,
        n_images=config["evaluation"]["n_images"],
    shell:
        "python -m vlv.caption --params {params.cfg:q} --teacher {params.teacher:q} {params.captioner} "
        "{params.shapes} --images {input.images} --n-images {params.n_images} --out {output} > {log} 2>&1"


rule evaluate_captions_shapes:
    input:
        code=code("evaluate_captions_shapes", "shapes/judge", "shapes/parse"),
        images="<results>/generate_shapes/eval",
        captions=lambda wildcards: [
            results_path("caption", f"{name}.jsonl") for name in captioners(wildcards.group)
        ],
    output:
        json="<results>/evaluate/captions_shapes_{group}.json",
        csv=report("<results>/evaluate/captions_shapes_{group}.csv", category="Stage 2"),
    log:
        "<logs>/evaluate/captions_shapes_{group}.log",
    benchmark:
        "<benchmarks>/evaluate/captions_shapes_{group}.tsv"
    wildcard_constraints:
        group="main|data_efficiency",
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        pairs=lambda wildcards, input: " ".join(
            f"{name}={path}" for name, path in zip(captioners(wildcards.group), input.captions)
        ),
    shell:
        "python -m vlv.evaluate_captions_shapes --images {input.images} --captions {params.pairs} "
        "--out {output.json} > {log} 2>&1"
