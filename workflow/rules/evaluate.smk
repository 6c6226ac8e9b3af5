# Evaluation: perplexity, zero-shot accuracy, efficiency, for the dense model (method
# `dense`, ratio 0.00, read straight from data/models/<key> or the hub) and every
# compressed model.

rule evaluate_dense:
    """Evaluate the uncompressed model, the reference row of every table."""
    input:
        model=lambda w: model_input(w.model),
        tasks=tasks_input(),
        corpora=svdconf.corpus_files(P, "evaluation"),  # local files: editing one reruns
    output:
        ppl=str(L.ppl("{model}", DENSE, 0.0)),
        zeroshot=str(L.zeroshot("{model}", DENSE, 0.0)),
        efficiency=str(L.efficiency("{model}", DENSE, 0.0)),
    params:
        code=code("evaluate"),
        exe=EXECUTION,
        model=lambda w: model_arg(w.model),
        flags=flags("evaluation"),
        task_dir=task_dir_flag(),
    log:
        log_path("evaluate", "{model}", DENSE),
    benchmark:
        bench_path("evaluate", "{model}", DENSE),
    conda:
        "../envs/svdzoo.yaml"
    threads: res("evaluate")["threads"]
    resources:
        gpu=res("evaluate")["gpu"],
        mem_mb=res("evaluate")["mem_mb"],
        runtime=res("evaluate")["runtime"],
    shell:
        "OMP_NUM_THREADS={threads} svdzoo {params.exe} evaluate --model {params.model}"
        " --model-name {wildcards.model} --method dense --ratio 0.00 {params.flags}"
        " {params.task_dir} --ppl-out {output.ppl} --zeroshot-out {output.zeroshot}"
        " --efficiency-out {output.efficiency} > {log} 2>&1"


rule evaluate:
    """Evaluate one compressed model."""
    input:
        model=ratio_pattern(L.compressed("{model}", "{method}", 0.0)),
        tasks=tasks_input(),
        corpora=svdconf.corpus_files(P, "evaluation"),  # local files: editing one reruns
    output:
        ppl=ratio_pattern(L.ppl("{model}", "{method}", 0.0)),
        zeroshot=ratio_pattern(L.zeroshot("{model}", "{method}", 0.0)),
        efficiency=ratio_pattern(L.efficiency("{model}", "{method}", 0.0)),
    params:
        code=code("evaluate"),
        exe=EXECUTION,
        flags=flags("evaluation"),
        task_dir=task_dir_flag(),
    log:
        log_path("evaluate", "{model}", "{method}", "r{ratio}"),
    benchmark:
        bench_path("evaluate", "{model}", "{method}", "r{ratio}"),
    conda:
        "../envs/svdzoo.yaml"
    threads: res("evaluate")["threads"]
    resources:
        gpu=res("evaluate")["gpu"],
        mem_mb=res("evaluate")["mem_mb"],
        runtime=res("evaluate")["runtime"],
    shell:
        "OMP_NUM_THREADS={threads} svdzoo {params.exe} evaluate --model {input.model}"
        " --model-name {wildcards.model} --method {wildcards.method} --ratio {wildcards.ratio}"
        " {params.flags} {params.task_dir} --ppl-out {output.ppl}"
        " --zeroshot-out {output.zeroshot} --efficiency-out {output.efficiency} > {log} 2>&1"
