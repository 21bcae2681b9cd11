# Evaluation, one rule per metric family, each writing one JSON per captioner:
# caption -> image distance (render, then Fréchet distance), reference-based caption metrics, and the
# exact Shapes judge (toy profile), the arena rating and questions answered from captions.


rule render_captions:
    input:
        code=code("vlv.evaluate.render_captions"),
        captions="<results>/caption/{captioner}.jsonl",
        renderer=model_input("renderer"),
    output:
        "<results>/render_captions/{captioner}.tar",
    log:
        "<logs>/render_captions/{captioner}.log",
    benchmark:
        "<benchmarks>/render_captions/{captioner}.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        cfg=params_json("evaluation"),
        renderer=model_arg("renderer"),
    shell:
        "python -m vlv.evaluate.render_captions --params {params.cfg:q} --renderer {params.renderer} "
        "--captions {input.captions} --out {output} > {log} 2>&1"


rule evaluate_fid:
    input:
        code=code("vlv.evaluate.evaluate_fid"),
        renders="<results>/render_captions/{captioner}.tar",
        images=split_dir("eval"),
        clip=model_input("clip"),
        inception=inception_input(),
    output:
        "<results>/evaluate/fid/{captioner}.json",
    log:
        "<logs>/evaluate/fid/{captioner}.log",
    benchmark:
        "<benchmarks>/evaluate/fid/{captioner}.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=params_json("evaluation"),
        clip=model_arg("clip"),
        inception=inception_arg,
        profile=config["profile"],
    shell:
        "python -m vlv.evaluate.evaluate_fid --params {params.cfg:q} --profile {params.profile} "
        "--clip {params.clip} {params.inception} --images {input.images} --renders {input.renders} "
        "--out {output} > {log} 2>&1"


rule evaluate_caption_metrics:
    input:
        code=code("vlv.evaluate.evaluate_caption_metrics"),
        captions="<results>/caption/{captioner}.jsonl",
        images=split_dir("eval"),
        clip=model_input("clip"),
    output:
        "<results>/evaluate/caption_metrics/{captioner}.json",
    log:
        "<logs>/evaluate/caption_metrics/{captioner}.log",
    benchmark:
        "<benchmarks>/evaluate/caption_metrics/{captioner}.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    params:
        clip=model_arg("clip"),
        leave_one_out=lambda wildcards: (
            "--exclude-first-reference" if wildcards.captioner == "reference" else ""
        ),
    shell:
        "python -m vlv.evaluate.evaluate_caption_metrics --clip {params.clip} --images {input.images} "
        "--captions {input.captions} {params.leave_one_out} --out {output} > {log} 2>&1"


rule evaluate_captions_shapes:
    input:
        code=code("vlv.evaluate.evaluate_captions_shapes"),
        images=split_dir("eval"),
        captions=lambda wildcards: [
            results_path("caption", f"{name}.jsonl") for name in captioners(wildcards.group)
        ],
    output:
        json="<results>/evaluate/captions_shapes_{group}.json",
        csv=report("<results>/evaluate/captions_shapes_{group}.csv", category="Stage 2"),
        figure=report("<results>/evaluate/captions_shapes_{group}.png", category="Stage 2"),
    log:
        "<logs>/evaluate/captions_shapes_{group}.log",
    benchmark:
        "<benchmarks>/evaluate/captions_shapes_{group}.tsv"
    wildcard_constraints:
        group="main|data_efficiency|ablations|seeds",
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
        "python -m vlv.evaluate.evaluate_captions_shapes --images {input.images} --captions {params.pairs} "
        "--out {output.json} > {log} 2>&1"


rule evaluate_arena:
    input:
        code=code("vlv.evaluate.evaluate_arena"),
        captions="<results>/caption/{captioner}.jsonl",
        images=split_dir("eval"),
        judge=local_model_input("arena", "judge"),
    output:
        "<results>/evaluate/arena/{captioner}.json",
    log:
        "<logs>/evaluate/arena/{captioner}.log",
    benchmark:
        "<benchmarks>/evaluate/arena/{captioner}.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cfg=json.dumps(config["arena"], sort_keys=True),
    shell:
        "python -m vlv.evaluate.evaluate_arena --params {params.cfg:q} --images {input.images} "
        "--captions {input.captions} --out {output} > {log} 2>&1"


rule make_questions:
    input:
        code=code("vlv.evaluate.make_questions"),
        images=split_dir("eval"),
    output:
        "<results>/evaluate/vqa/questions.jsonl",
    log:
        "<logs>/evaluate/vqa/questions.log",
    benchmark:
        "<benchmarks>/evaluate/vqa/questions.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "python -m vlv.evaluate.make_questions --images {input.images} --out {output} > {log} 2>&1"


rule evaluate_vqa:
    input:
        code=code("vlv.evaluate.evaluate_vqa"),
        questions=vqa_questions(),
        captions="<results>/caption/{captioner}.jsonl",
        references="<results>/caption/reference.jsonl",
        reader=vqa_reader_input(),
    output:
        "<results>/evaluate/vqa/{captioner}.json",
    log:
        "<logs>/evaluate/vqa/{captioner}.log",
    benchmark:
        "<benchmarks>/evaluate/vqa/{captioner}.tsv"
    wildcard_constraints:
        captioner="[^/]+",
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg=params_json("vqa"),
    shell:
        "python -m vlv.evaluate.evaluate_vqa --params {params.cfg:q} --questions {input.questions} "
        "--captions {input.captions} --references {input.references} --out {output} > {log} 2>&1"


rule evaluate_vqa_more:
    input:
        code=code("vlv.evaluate.evaluate_vqa"),
        questions=lambda w: config["vqa"]["more"][w.vqa_set]["questions"],
        captions="<results>/caption/{captioner}.jsonl",
        references="<results>/caption/reference.jsonl",
        reader=vqa_reader_input(),
    output:
        "<results>/evaluate/vqa/{vqa_set}/{captioner}.json",
    log:
        "<logs>/evaluate/vqa/{vqa_set}/{captioner}.log",
    benchmark:
        "<benchmarks>/evaluate/vqa/{vqa_set}/{captioner}.tsv"
    wildcard_constraints:
        vqa_set="|".join(config["vqa"]["more"]) or "^$",
        captioner="[^/]+",
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg=params_json("vqa"),
        dataset=lambda w: config["vqa"]["more"][w.vqa_set]["dataset"],
    shell:
        "python -m vlv.evaluate.evaluate_vqa --params {params.cfg:q} --questions {input.questions} "
        "--captions {input.captions} --references {input.references} --dataset {params.dataset:q} "
        "--out {output} > {log} 2>&1"
