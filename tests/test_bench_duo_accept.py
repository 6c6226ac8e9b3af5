"""benchmarks/bench_duo_accept.py: it reads run_duo_accept.sh's folder (a model's manifest
beside its ppl.json), counts the matrices that kept a split, and bolds each ratio's best."""

from __future__ import annotations

import json

import pytest
from helpers import load_benchmark


def _scored(folder, accept: str, ratio: str, pydoc: float, kept: list[int]) -> None:
    d = folder / f"duo-svd-a{accept}-r{ratio}"
    d.mkdir()
    modules = {f"m{i}": {"kept_columns": k} for i, k in enumerate(kept)}
    (d / "manifest.json").write_text(json.dumps({"modules": modules, "achieved_ratio": 0.801}))
    ppl = {"perplexity": {"pydoc": pydoc, "pysource": 2 * pydoc}}
    (folder / f"{d.name}.ppl.json").write_text(json.dumps(ppl))


def test_collect_and_tabulate(tmp_path):
    bench = load_benchmark("bench_duo_accept")
    _scored(tmp_path, "0.01", "0.80", 3258.0977, [58, 0, 3])
    _scored(tmp_path, "0.05", "0.80", 1484.0384, [58, 0, 0])
    _scored(tmp_path, "1.0", "0.80", 1795.7765, [0, 0, 0])
    df = bench.collect(tmp_path)
    assert list(df["accept"]) == [0.01, 0.05, 1.0] and list(df["splits"]) == [2, 1, 0]
    md = bench.markdown(df)
    assert "| 0.05 | **1,484.04 / 2,968.08**, 1 |" in md
    assert "| 0.01 (official) | 3,258.10 / 6,516.20, 2 |" in md
    assert bench._two(67.145) == "67.15"  # half up, from the text: 67.145 is 67.14 in binary


def test_an_empty_folder_says_what_to_run(tmp_path):
    bench = load_benchmark("bench_duo_accept")
    with pytest.raises(SystemExit, match="run_duo_accept.sh"):
        bench.collect(tmp_path)
