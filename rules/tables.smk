# The paper's tables as CSV files (results/tables/ in the toy profile, results/paper/tables/ in the paper one).


rule table_coco:
    input:
        code=code("vlv.stages.tables"),
        fid=expand("<results>/evaluate/fid/{captioner}.json", captioner=captioners()),
        metrics=expand(
            "<results>/evaluate/caption_metrics/{captioner}.json", captioner=captioners()
        ),
    output:
        table=report("<results>/tables/coco.csv", category="Tables"),
        metrics="<results>/tables/coco.json",
        figure=report("<results>/tables/coco_distance_vs_guidance.png", category="Tables"),
        figure_data="<results>/tables/coco_distance_vs_guidance.csv",
    log:
        "<logs>/tables/coco.log",
    benchmark:
        "<benchmarks>/tables/coco.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        profile=config["profile"],
        dataset=evaluation_dataset(),
    shell:
        "python -m vlv.stages.tables coco --profile {params.profile} --dataset {params.dataset:q} --fid {input.fid} "
        "--caption-metrics {input.metrics} --out {output.table} --figure {output.figure} > {log} 2>&1"


rule table_spatial:
    input:
        code=code("vlv.stages.tables"),
        reconstruct="<results>/reconstruct/encoder/metrics.json",
    output:
        table=report("<results>/tables/spatial.csv", category="Tables"),
        metrics="<results>/tables/spatial.json",
    log:
        "<logs>/tables/spatial.log",
    benchmark:
        "<benchmarks>/tables/spatial.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        profile=config["profile"],
        dataset=evaluation_dataset(),
    shell:
        "python -m vlv.stages.tables spatial --profile {params.profile} --dataset {params.dataset:q} "
        "--reconstruct {input.reconstruct} --out {output.table} > {log} 2>&1"


rule table_arena:
    input:
        code=code("vlv.stages.tables"),
        arena=expand("<results>/evaluate/arena/{captioner}.json", captioner=captioners()),
    output:
        table=report("<results>/tables/arena.csv", category="Tables"),
        metrics="<results>/tables/arena.json",
    log:
        "<logs>/tables/arena.log",
    benchmark:
        "<benchmarks>/tables/arena.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        profile=config["profile"],
        dataset=evaluation_dataset(),
    shell:
        "python -m vlv.stages.tables arena --profile {params.profile} --dataset {params.dataset:q} "
        "--arena {input.arena} --out {output.table} > {log} 2>&1"


rule table_vqa:
    input:
        code=code("vlv.stages.tables"),
        vqa=expand("<results>/evaluate/vqa/{captioner}.json", captioner=captioners()),
        more=expand(
            "<results>/evaluate/vqa/{vqa_set}/{captioner}.json",
            vqa_set=list(config["vqa"]["more"]),
            captioner=captioners(),
        ),
    output:
        table=report("<results>/tables/vqa.csv", category="Tables"),
        metrics="<results>/tables/vqa.json",
    log:
        "<logs>/tables/vqa.log",
    benchmark:
        "<benchmarks>/tables/vqa.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        profile=config["profile"],
        dataset=vqa_dataset(),
    shell:
        "python -m vlv.stages.tables vqa --profile {params.profile} --dataset {params.dataset:q} "
        "--vqa {input.vqa} {input.more} --out {output.table} > {log} 2>&1"


rule table_no_stage1:
    input:
        code=code("vlv.stages.tables"),
        fid=expand(
            "<results>/evaluate/fid/{captioner}.json",
            captioner=["vlv_pairs100", "no_stage1_pairs100"],
        ),
        finetune=expand(
            "<results>/finetune_stage2/{captioner}",
            captioner=["vlv_pairs100", "no_stage1_pairs100"],
        ),
        judge=judge_input("main"),
    output:
        table=report("<results>/tables/no_stage1.csv", category="Tables"),
        metrics="<results>/tables/no_stage1.json",
    log:
        "<logs>/tables/no_stage1.log",
    benchmark:
        "<benchmarks>/tables/no_stage1.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        profile=config["profile"],
        dataset=evaluation_dataset(),
        judge=judge_arg,
    shell:
        "python -m vlv.stages.tables no_stage1 --profile {params.profile} --dataset {params.dataset:q} "
        "--fid {input.fid} --finetune {input.finetune} {params.judge} --out {output.table} > {log} 2>&1"


# The headline figures per seed (target `seeds`, outside `all`): stage 1, VLV and the direct
# captioner retrained with each seed of seeds.runs, their mean and spread.
rule table_seeds:
    input:
        code=code("vlv.stages.tables"),
        reconstruct=seed_outputs()["reconstruct"],
        finetune=seed_outputs()["finetune"],
        fid=seed_outputs()["fid"],
        arena=seed_outputs()["arena"],
        vqa=seed_outputs()["vqa"],
        judge=judge_input("seeds"),
    output:
        table=report("<results>/tables/seeds.csv", category="Tables"),
        metrics="<results>/tables/seeds.json",
    log:
        "<logs>/tables/seeds.log",
    benchmark:
        "<benchmarks>/tables/seeds.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        profile=config["profile"],
        dataset=evaluation_dataset(),
        judge=judge_arg,
    shell:
        "python -m vlv.stages.tables seeds --profile {params.profile} --dataset {params.dataset:q} "
        "--reconstruct {input.reconstruct} --finetune {input.finetune} --fid {input.fid} --arena {input.arena} "
        "--vqa {input.vqa} {params.judge} --out {output.table} > {log} 2>&1"


# Cost: each stage's measured throughput and the GPU-hours it projects at the configured scale,
# against the paper's budget (outside `all`: it reads timings, which differ from run to run).
rule cost_report:
    input:
        code=code("vlv.stages.cost_report"),
        subset="<results>/subset/subset.json",
        teacher="<results>/synthesize_captions/manifest.json",
        stage1="<results>/distill_stage1/encoder",
        stage2="<results>/finetune_stage2/vlv_pairs100",
        caption="<results>/caption/vlv_pairs100.jsonl",
        render="<results>/render_captions/vlv_pairs100.tar",
    output:
        table=report("<results>/tables/cost.csv", category="Tables"),
        summary="<results>/tables/cost.json",
    log:
        "<logs>/tables/cost.log",
    benchmark:
        "<benchmarks>/tables/cost.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        cfg=cost_json(),
        manifests=cost_manifests,
    shell:
        "python -m vlv.stages.cost_report --params {params.cfg:q} --manifest {params.manifests} "
        "--out {output.table} > {log} 2>&1"
