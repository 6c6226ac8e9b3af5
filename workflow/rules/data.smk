# Reference models (trained by the workflow for the offline default) and offline tasks.


rule train_reference:
    """Train a small reference LM; `models.<key>` of params gives family, corpus, steps."""
    output:
        directory(str(L.reference_model("{model}"))),
    params:
        spec=lambda w: P["models"][w.model],
        extra=lambda w: " ".join(svdconf.cli_flags(P["models"][w.model]["options"])),
    log:
        log_path("train_reference", "{model}"),
    conda:
        "../envs/svdzoo.yaml"
    threads: res("train")["threads"]
    priority: 100  # the longest jobs and the roots of everything: start them first
    resources:
        gpu=res("train")["gpu"],
        mem_mb=res("train")["mem_mb"],
        runtime=res("train")["runtime"],
    wildcard_constraints:
        model=_alt(REFERENCE_MODELS),
    shell:
        "OMP_NUM_THREADS={threads} svdzoo train-reference --family {params.spec[family]}"
        " --corpus {params.spec[corpus]} --steps {params.spec[steps]} --seed {params.spec[seed]}"
        " {params.extra} --out {output} > {log} 2>&1"


rule build_tasks:
    """The offline zero-shot tasks (lm-eval YAML + JSONL) from pydoc and pysource."""
    output:
        directory(str(L.tasks())),
    params:
        corpora=",".join(svdconf.OFFLINE_TASK_CORPORA),
        extra=flags("offline_tasks"),
    log:
        log_path("build_tasks", "tasks"),
    conda:
        "../envs/svdzoo.yaml"
    threads: res("tasks")["threads"]
    resources:
        gpu=res("tasks")["gpu"],
        mem_mb=res("tasks")["mem_mb"],
        runtime=res("tasks")["runtime"],
    shell:
        "svdzoo build-tasks --corpora {params.corpora} {params.extra} --out {output} > {log} 2>&1"
