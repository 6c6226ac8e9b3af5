# Compression, per model x method x ratio; each method depends on exactly the statistics
# it reads (svdzoo.methods.requirements): plain SVD needs none and never waits for them.

rule compress:
    """Compress one model with one method at one ratio (svdzoo compress)."""
    input:
        unpack(compress_inputs),
    output:
        compressed_output(),
    params:
        code=lambda w: code("compress", w.method),
        exe=EXECUTION,
        model=lambda w: model_arg(w.model),
        stats=stats_flags,
        extra=flags("compress"),
        options=lambda w: shlex.join(svdconf.option_flags(P, w.method)),
        calib=calibration_flag,
    log:
        log_path("compress", "{model}", "{method}", "r{ratio}"),
    benchmark:
        bench_path("compress", "{model}", "{method}", "r{ratio}"),
    conda:
        "../envs/svdzoo.yaml"
    threads: res("compress")["threads"]
    resources:
        gpu=res("compress")["gpu"],
        mem_mb=res("compress")["mem_mb"],
        runtime=res("compress")["runtime"],
    shell:
        "OMP_NUM_THREADS={threads} svdzoo {params.exe} compress --model {params.model}"
        " {params.stats}"
        " --method {wildcards.method} --ratio {wildcards.ratio} {params.extra} {params.options}"
        " {params.calib}"
        " --out {output} > {log} 2>&1"
