# The report: tidy metrics.csv, the headline summary.json and plot data (DVC's metrics and
# plots), tables and figures over every evaluation, plus the published-vs-reproduced
# comparison. The same command as dvc.yaml's report stage: the params file gives the runs
# it expects, the published CSV and the published model names.

rule report:
    """Collect every metric into results/metrics.csv; write tables/ and figures/."""
    input:
        metrics=metric_files(),
        published=published_input(),
    output:
        csv=report(
            str(L.metrics_csv), caption="../report/metrics.rst", category="Metrics"
        ),
        summary=str(L.summary),
        tables=report(
            directory(str(L.tables)),
            patterns=["{name}.csv"],
            caption="../report/tables.rst",
            category="Tables",
        ),
        figures=report(
            directory(str(L.figures)),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
        plots=directory(str(L.plots)),
    params:
        code=code("report"),
        results=lambda w, output: str(Path(output.csv).parent),
        params_file=PARAMS_FILE,
        reads=report_params(),
    log:
        log_path("report", "report"),
    benchmark:
        bench_path("report", "report"),
    conda:
        "../envs/svdzoo.yaml"
    threads: res("report")["threads"]
    resources:
        gpu=res("report")["gpu"],
        mem_mb=res("report")["mem_mb"],
        runtime=res("report")["runtime"],
    shell:
        "svdzoo report --params {params.params_file} --results {params.results}"
        " --out {params.results} > {log} 2>&1"
