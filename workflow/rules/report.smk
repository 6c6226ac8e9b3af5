# The report: tidy metrics.csv, tables and figures over every evaluation, plus the
# published-vs-reproduced comparison when the published numbers are present.

rule report:
    """Collect every metric into results/metrics.csv; write tables/ and figures/."""
    input:
        metrics=metric_files(),
        published=published_input(),
    output:
        csv=str(L.metrics_csv),
        tables=directory(str(L.tables)),
        figures=directory(str(L.figures)),
    params:
        code=code("report"),
        results=lambda w, output: str(Path(output.csv).parent),
        extra=report_flags(),
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
        "svdzoo report --results {params.results} --out {params.results} {params.extra}"
        " --expect {input.metrics} > {log} 2>&1"
