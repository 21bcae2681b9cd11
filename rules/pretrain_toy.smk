# Training the toy stand-in models (target `pretrain_toy`, outside `all`). `all` starts from the
# committed folders under models/toy/; these rules write fresh ones under <results>/pretrain_toy/.
# Checkpoints go to work/pretrain_toy/ (not a declared output, so a failed job keeps them and the
# rerun resumes).


rule pretrain_toy:
    input:
        "<results>/pretrain_toy/t2i",
        "<results>/pretrain_toy/renderer",
        "<results>/pretrain_toy/clip",
        "<results>/pretrain_toy/lm",
        "<results>/pretrain_toy/lm_small",
        "<results>/pretrain_toy/lm_large",
        "<results>/pretrain_toy/vision",
        "<results>/pretrain_toy/benchmark.json",


rule pretrain_toy_t2i:
    input:
        code=code("vlv.toy.pretrain_toy_t2i"),
    output:
        directory("<results>/pretrain_toy/{t2i_name}"),
    log:
        "<logs>/pretrain_toy/{t2i_name}.log",
    benchmark:
        "<benchmarks>/pretrain_toy/{t2i_name}.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        cfg=lambda wildcards: params_json(f"pretrain_toy.{wildcards.t2i_name}"),
        work=lambda wc: work_dir(f"pretrain_toy/{wc.t2i_name}"),
    shell:
        "python -m vlv.toy.pretrain_toy_t2i --params {params.cfg:q} --out {output} --work {params.work} > {log} 2>&1"


rule pretrain_toy_clip:
    input:
        code=code("vlv.toy.pretrain_toy_clip"),
    output:
        directory("<results>/pretrain_toy/clip"),
    log:
        "<logs>/pretrain_toy/clip.log",
    benchmark:
        "<benchmarks>/pretrain_toy/clip.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        cfg=params_json("pretrain_toy.clip"),
        work=work_dir("pretrain_toy/clip"),
    shell:
        "python -m vlv.toy.pretrain_toy_clip --params {params.cfg:q} --out {output} --work {params.work} > {log} 2>&1"


rule pretrain_toy_lm:
    input:
        code=code("vlv.toy.pretrain_toy_lm"),
    output:
        directory("<results>/pretrain_toy/{lm_name}"),
    log:
        "<logs>/pretrain_toy/{lm_name}.log",
    benchmark:
        "<benchmarks>/pretrain_toy/{lm_name}.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        cfg=lambda wildcards: params_json(f"pretrain_toy.{wildcards.lm_name}"),
        work=lambda wildcards: work_dir(f"pretrain_toy/{wildcards.lm_name}"),
    shell:
        "python -m vlv.toy.pretrain_toy_lm --params {params.cfg:q} --out {output} --work {params.work} > {log} 2>&1"


rule pretrain_toy_vision:
    input:
        code=code("vlv.toy.pretrain_toy_vision"),
    output:
        directory("<results>/pretrain_toy/vision"),
    log:
        "<logs>/pretrain_toy/vision.log",
    benchmark:
        "<benchmarks>/pretrain_toy/vision.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        cfg=params_json("pretrain_toy.vision"),
        work=work_dir("pretrain_toy/vision"),
    shell:
        "python -m vlv.toy.pretrain_toy_vision --params {params.cfg:q} --out {output} --work {params.work} > {log} 2>&1"


rule benchmark_toy_standins:
    input:
        code=code("vlv.toy.evaluate_standins"),
        t2i="<results>/pretrain_toy/t2i",
        renderer="<results>/pretrain_toy/renderer",
        clip="<results>/pretrain_toy/clip",
    output:
        report="<results>/pretrain_toy/benchmark.json",
        grid="<results>/pretrain_toy/samples.png",
    log:
        "<logs>/pretrain_toy/benchmark.log",
    benchmark:
        "<benchmarks>/pretrain_toy/benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        cfg=params_json("pretrain_toy.benchmark"),
    shell:
        "python -m vlv.toy.evaluate_standins --params {params.cfg:q} --t2i {input.t2i} --t2i {input.renderer} "
        "--clip {input.clip} --out {output.report} --grid {output.grid} > {log} 2>&1"
