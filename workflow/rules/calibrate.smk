# Statistics, once per model x calibration set, shared by every method and ratio.


rule calibrate:
    """Gram matrices, abs-means and layer cosines (svdzoo calibrate)."""
    input:
        lambda w: model_input(w.model),
        corpora=svdconf.corpus_files(P, "calibration"),  # a local file: editing it reruns
    output:
        directory(str(L.gram("{model}", "{calib}"))),
    params:
        code=code("calibrate"),
        exe=EXECUTION,
        model=lambda w: model_arg(w.model),
        extra=flags("calibration"),
    log:
        log_path("calibrate", "{model}", "{calib}"),
    benchmark:
        bench_path("calibrate", "{model}", "{calib}"),
    conda:
        "../envs/svdzoo.yaml"
    threads: res("calibrate")["threads"]
    priority: 90  # every compression waits for the Gram: start it as soon as the model exists
    resources:
        gpu=res("calibrate")["gpu"],
        mem_mb=res("calibrate")["mem_mb"],
        runtime=res("calibrate")["runtime"],
    shell:
        "OMP_NUM_THREADS={threads} svdzoo {params.exe} calibrate --model {params.model}"
        " --model-name {wildcards.model} {params.extra} --out {output} > {log} 2>&1"


rule calibrate_fisher:
    """FWSVD's squared-gradient Fisher importances (svdzoo calibrate --kind fisher)."""
    input:
        lambda w: model_input(w.model),
        corpora=svdconf.corpus_files(P, "calibration"),
    output:
        directory(str(L.fisher("{model}", "{calib}"))),
    params:
        code=code("calibrate"),
        exe=EXECUTION,
        model=lambda w: model_arg(w.model),
        extra=flags("calibration"),
    log:
        log_path("calibrate_fisher", "{model}", "{calib}"),
    benchmark:
        bench_path("calibrate_fisher", "{model}", "{calib}"),
    conda:
        "../envs/svdzoo.yaml"
    threads: res("fisher")["threads"]
    resources:
        gpu=res("fisher")["gpu"],
        mem_mb=res("fisher")["mem_mb"],
        runtime=res("fisher")["runtime"],
    shell:
        "OMP_NUM_THREADS={threads} svdzoo {params.exe} calibrate --kind fisher"
        " --model {params.model}"
        " --model-name {wildcards.model} {params.extra} --out {output} > {log} 2>&1"


rule sensitivity:
    """Module sensitivity table (Duo-SVD KL or ASVD perplexity), reused by every ratio;
    kind `duo-r0.20` is Duo-SVD's per-ratio table for ratio 0.20."""
    input:
        model=lambda w: model_input(w.model),
        gram=str(L.gram("{model}", "{calib}")),
        corpora=svdconf.corpus_files(P, "calibration"),
    output:
        directory(str(L.sensitivity("{model}", "{calib}", "{kind}"))),
    params:
        code=code("sensitivity"),
        exe=EXECUTION,
        model=lambda w: model_arg(w.model),
        extra=flags("sensitivity"),
        kind=lambda w: svdconf.sensitivity_flags(w.kind),
    log:
        log_path("sensitivity", "{model}", "{calib}", "{kind}"),
    benchmark:
        bench_path("sensitivity", "{model}", "{calib}", "{kind}"),
    conda:
        "../envs/svdzoo.yaml"
    threads: res("sensitivity")["threads"]
    priority: 80  # the longest single jobs (KL / perplexity tables): on the critical path, start them first
    resources:
        gpu=res("sensitivity")["gpu"],
        mem_mb=res("sensitivity")["mem_mb"],
        runtime=res("sensitivity")["runtime"],
    shell:
        "OMP_NUM_THREADS={threads} svdzoo {params.exe} sensitivity --model {params.model}"
        " --stats {input.gram}"
        " {params.kind} {params.extra} --out {output} > {log} 2>&1"
