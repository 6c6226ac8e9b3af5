"""benchmarks/bench_split_probe.py: it reuses the models already made in --work, reads the
workflow's own Duo-SVD runs, and reports each probed model against both."""

from __future__ import annotations

import argparse
import json

from helpers import load_benchmark


def _ppl(path, pydoc: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"perplexity": {"pydoc": pydoc, "pysource": 2 * pydoc}}))


def _made(work, name: str, pydoc: float, probe: dict | None = None) -> None:
    (work / name).mkdir(parents=True)
    manifest = {"compression_time_s": 12.5, "allocation": {}}
    if probe is not None:
        manifest["allocation"]["split_probe"] = probe
    (work / name / "manifest.json").write_text(json.dumps(manifest))
    _ppl(work / f"{name}.ppl.json", pydoc)


def test_measure_reads_what_is_there_and_reports_it(tmp_path):
    bench = load_benchmark("bench_split_probe")
    results, work = tmp_path / "results", tmp_path / "work"
    metrics = results / "metrics" / "m"
    _ppl(metrics / "duo-svd-independent" / "r0.80" / "ppl.json", 5512.35)
    _ppl(metrics / "duo-svd" / "r0.80" / "ppl.json", 3258.10)
    _ppl(metrics / "duo-svd-allocation" / "r0.80" / "ppl.json", 1795.78)
    probe = {"kept": 12, "candidates": [{}] * 35, "kl_without_splits": 4.46, "kl": 3.76}
    _made(work, "duo-svd-allocation-ind-r0.80", 2539.25)
    _made(work, "svdzoo-duo-probed-ind-r0.80", 1680.99, probe)
    _made(work, "svdzoo-duo-probed-pr-r0.80", 1616.81, {**probe, "kept": 10})
    args = argparse.Namespace(
        results=results, work=work, model="m", calibration="c", ratios=["0.80"],
        per_ratio=["0.80"], corpora=["pydoc", "pysource"], max_windows=8,
    )  # fmt: skip
    df = bench.measure(args)  # nothing to make: every model is there
    assert len(df) == 6
    text = bench.report(df, "reused", args)
    assert (
        "independent table, 80%: all / no split / probed: pydoc 5,512.35 / 2,539.25 / 1,680.99"
        in text
    )
    assert "kept 12 of 35 splits" in text and "kept 10 of 35 splits" in text
    assert "(x0.900 of no split, x0.496 of all)" in text  # per-ratio pydoc: 1616.81 / 1795.78
    bench.plot(df, args, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 0
