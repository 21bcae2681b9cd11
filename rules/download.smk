# The paper profile's data (data.source: download; not included in the toy profile). Files are
# fetched once into data/download/ (resumable; a failed job keeps its .part file), then made into the
# shard folders the stages read: COCO 2014 val (eval), VQAv2 questions on it (Table 3), the LAION
# pool through img2dataset (stage 1) and stage 2's sample of the subset (pairs).


# Table 3's question sets: (questions zip, annotations zip) in data/download/, the official names.
VQA_SOURCES = {
    "vqav2": ("v2_Questions_Val_mscoco.zip", "v2_Annotations_Val_mscoco.zip"),
    "okvqa": ("OpenEnded_mscoco_val2014_questions.json.zip", "mscoco_val2014_annotations.json.zip"),
}


wildcard_constraints:
    file="|".join(re.escape(f) for f in config["data"]["files"]) or "^$",


rule download:
    output:
        file="data/download/{file}",
        record="data/download/{file}.json",
    log:
        "<logs>/download/{file}.log",
    benchmark:
        "<benchmarks>/download/{file}.tsv"
    localrule: True
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=600,
    params:
        cfg=lambda wildcards: params_json("download", wildcards.file),
    shell:
        "python -m vlv.paper_data.download --params {params.cfg:q} --out {output.file} > {log} 2>&1"


rule prepare_coco:
    input:
        code=code("vlv.paper_data.prepare_coco"),
        images="data/download/val2014.zip",
        annotations="data/download/annotations_trainval2014.zip",
    output:
        directory("<results>/prepare_coco/eval"),
    log:
        "<logs>/prepare_coco/eval.log",
    benchmark:
        "<benchmarks>/prepare_coco/eval.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cfg=params_json("coco"),
    shell:
        "python -m vlv.paper_data.prepare_coco eval --params {params.cfg:q} --images {input.images} "
        "--annotations {input.annotations} --out {output} > {log} 2>&1"


rule prepare_vqa:
    input:
        code=code("vlv.paper_data.prepare_coco"),
        split="<results>/prepare_coco/eval",
        questions=lambda w: f"data/download/{VQA_SOURCES[w.vqa_set][0]}",
        annotations=lambda w: f"data/download/{VQA_SOURCES[w.vqa_set][1]}",
    output:
        "<results>/prepare_coco/{vqa_set}.jsonl",
    log:
        "<logs>/prepare_coco/{vqa_set}.log",
    benchmark:
        "<benchmarks>/prepare_coco/{vqa_set}.tsv"
    wildcard_constraints:
        vqa_set="|".join(VQA_SOURCES),
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m vlv.paper_data.prepare_coco vqa --split {input.split} --questions {input.questions} "
        "--annotations {input.annotations} --out {output} > {log} 2>&1"


rule laion_metadata:
    output:
        directory(config["data"]["laion"]["metadata"]),
    log:
        "<logs>/download/laion_metadata.log",
    localrule: True
    conda:
        "../environment.yml"
    params:
        urls=" ".join(shlex.quote(u) for u in config["data"]["laion"]["metadata_urls"]),
    shell:
        "python -m vlv.paper_data.prepare_laion metadata --urls {params.urls} --out {output} > {log} 2>&1"


rule download_laion:
    input:
        code=code("vlv.paper_data.prepare_laion"),
        metadata=config["data"]["laion"]["metadata"],
    output:
        directory("<results>/download_laion/pool"),
    log:
        "<logs>/download_laion/pool.log",
    benchmark:
        "<benchmarks>/download_laion/pool.tsv"
    conda:
        "../envs/img2dataset.yml"
    threads: config["data"]["laion"]["processes"]
    resources:
        mem_mb=32000,
        runtime=7 * 24 * 60,
    params:
        cfg=params_json("laion"),
        work=work_dir("download_laion"),
    shell:
        "python -m vlv.paper_data.prepare_laion run --params {params.cfg:q} --metadata {input.metadata} "
        "--work {params.work} --out {output} > {log} 2>&1"


rule laion_pairs:
    input:
        code=code("vlv.paper_data.prepare_laion"),
        images="<results>/download_laion/pool",
        subset="<results>/subset/subset.json",
    output:
        directory("<results>/download_laion/pairs"),
    log:
        "<logs>/download_laion/pairs.log",
    benchmark:
        "<benchmarks>/download_laion/pairs.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=24 * 60,
    params:
        n=config["data"]["pairs"],
        seed=config["evaluation"]["seed"],
        shard_size=config["data"]["laion"]["shard_size"],
    shell:
        "python -m vlv.paper_data.prepare_laion pairs --images {input.images} --subset {input.subset} --n {params.n} "
        "--seed {params.seed} --shard-size {params.shard_size} --out {output} > {log} 2>&1"
