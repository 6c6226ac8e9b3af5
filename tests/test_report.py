"""Reporting on a small synthetic metrics tree: tidy CSV, tables, figures, published join."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import load_benchmark

from svdzoo.cli import main
from svdzoo.errors import OutputError
from svdzoo.io import write_json
from svdzoo.paths import Layout
from svdzoo.report import build_report
from svdzoo.report.metrics import COLUMNS, MetricsError, collect
from svdzoo.report.published import compare, load_published
from svdzoo.report.tables import best_mask, table1

PUBLISHED = Path(__file__).resolve().parents[1] / "data" / "published.csv"
CORPORA = ("wikitext2", "pydoc")
TASKS = ("task_a", "task_b")
# (method, ratio) -> wikitext2 perplexity; other metrics derive from it
RUNS = {
    ("dense", 0.0): 6.0,
    ("svd", 0.2): 900.0,
    ("svd-llm", 0.2): 8.0,
    ("svd-llm-v2", 0.2): 7.5,
    ("svd", 0.4): 5000.0,
    ("svd-llm", 0.4): 14.0,
    ("svd-llm-v2", 0.4): 11.0,
}
MODELS = ("llama-7b", "ref-llama")


def _manifest(method: str, ratio: float) -> dict:
    modules = {}
    types = ("q_proj", "k_proj", "down_proj")
    for layer in range(3):
        for j, t in enumerate(types):
            r = ratio if method != "svd-llm-v2" else ratio + 0.1 * (j - 1) + 0.02 * layer
            modules[f"model.layers.{layer}.{t}"] = {
                "m": 64, "n": 64, "rank": 8, "kept_columns": 0, "ratio": r,
                "dense": False, "layer": layer, "type": t,
            }  # fmt: skip
    return {
        "method": method, "ratio": ratio, "achieved_ratio": ratio,
        "params_dense": 1000, "params_compressed": int(1000 * (1 - ratio)),
        "model_params_dense": 2000, "model_params_compressed": 2000 - int(1000 * ratio),
        "compression_time_s": 10.0 + 100 * ratio + (5.0 if method == "svd-llm-v2" else 0.0),
        "modules": modules,
    }  # fmt: skip


def make_tree(root: Path, *, skip: set[tuple[str, str, float, str]] = frozenset()) -> Path:
    """results/ under `root` for MODELS x RUNS; `skip` removes (model, method, ratio, kind)."""
    layout = Layout(root)
    for model in MODELS:
        for (method, ratio), ppl in RUNS.items():
            labels = {"model": model, "method": method, "ratio": ratio}
            acc = 0.6 if ppl < 10 else 0.5 if ppl < 100 else 0.26
            files = {
                "ppl": (
                    layout.ppl(model, method, ratio),
                    {
                        **labels,
                        "seqlen": 128,
                        "perplexity": {"wikitext2": ppl, "pydoc": ppl / 2},
                        "n_windows": {"wikitext2": 4, "pydoc": 4},
                    },
                ),
                "zeroshot": (
                    layout.zeroshot(model, method, ratio),
                    {
                        **labels,
                        "tasks": {
                            t: {
                                "acc": acc + 0.01 * i,
                                "acc_stderr": 0.02,
                                "acc_norm": acc,
                                "acc_norm_stderr": 0.02,
                            }
                            for i, t in enumerate(TASKS)
                        },
                        "mean_acc": acc + 0.005,
                    },
                ),
                "efficiency": (
                    layout.efficiency(model, method, ratio),
                    {
                        **labels,
                        "params_total": 2000 - int(1000 * ratio),
                        "params_targets": int(1000 * (1 - ratio)),
                        "weight_bytes": 4 * (2000 - int(1000 * ratio)),
                        "peak_memory_bytes": 10_000 - int(3000 * ratio),
                        "throughput": [
                            {
                                "batch_size": bs,
                                "prefill_tokens_per_s": 1000.0 * bs * (1 + ratio),
                                "decode_tokens_per_s": 50.0 * bs * (1 + ratio),
                            }
                            for bs in (1, 4)
                        ],
                        "compression_time_s": None,
                    },
                ),
            }
            for kind, (path, obj) in files.items():
                if (model, method, ratio, kind) not in skip:
                    write_json(path, obj)
            if method != "dense":
                write_json(
                    layout.compressed_manifest(model, method, ratio), _manifest(method, ratio)
                )
    return layout.results


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    results = make_tree(root)
    build_report(results, results, published=PUBLISHED, model_names={"ref-llama": "NoSuchModel"})
    return results


def test_tidy_csv_rows_and_columns(report: Path) -> None:
    df = pd.read_csv(report / "metrics.csv", keep_default_na=False, na_values=[""])
    assert list(df.columns) == COLUMNS
    n_runs = len(MODELS) * len(RUNS)
    ppl = df[df["metric"] == "perplexity"]
    assert len(ppl) == n_runs * len(CORPORA)
    assert set(ppl["dataset"]) == set(CORPORA)
    acc = df[df["metric"] == "acc"]
    assert len(acc) == n_runs * (len(TASKS) + 1)  # tasks + mean
    row = ppl[
        (ppl["model"] == "llama-7b")
        & (ppl["method"] == "svd-llm")
        & (ppl["ratio"] == 0.4)
        & (ppl["dataset"] == "wikitext2")
    ]
    assert row["value"].tolist() == [14.0]
    dec = df[(df["metric"] == "decode_tokens_per_s") & (df["dataset"] == "bs4")]
    assert len(dec) == n_runs
    # compression time comes from the manifest when efficiency.json has none; dense has none
    ct = df[df["metric"] == "compression_time_s"]
    assert len(ct) == len(MODELS) * (len(RUNS) - 1)
    assert not df.duplicated(["model", "method", "ratio", "metric", "dataset"]).any()


def test_table1_files_and_bold_best(report: Path) -> None:
    tables = report / "tables"
    t = pd.read_csv(tables / "table1_llama-7b.csv")
    assert list(t.columns[:2]) == ["method", "ratio"]
    assert {"ppl:wikitext2", "ppl:pydoc", "acc:task_a", "acc:task_b", "acc:mean"} <= set(t.columns)
    assert t["method"].iloc[0] == "dense" and len(t) == len(RUNS)
    md = (tables / "table1_llama-7b.md").read_text()
    lines = {
        ln.split("|")[1].strip(): ln
        for ln in md.splitlines()
        if ln.startswith("|") and "---" not in ln
    }
    svd_llm_v2 = [ln for ln in md.splitlines() if "| svd-llm-v2" in ln]
    assert len(svd_llm_v2) == 2 and all("**" in ln for ln in svd_llm_v2)  # best at both ratios
    assert "**" not in lines["dense"] and not any(
        "**" in ln for ln in md.splitlines() if "| svd " in ln
    )
    tex = (tables / "table1_llama-7b.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\textbf{" in tex and r"svd-llm-v2" in tex
    assert r"task\_a" in tex
    s = pd.read_csv(tables / "summary_ref-llama.csv")
    assert "compression time (s)" in s.columns and "decode tok/s (bs4)" in s.columns
    assert (tables / "summary_ref-llama.md").exists() and (
        tables / "summary_ref-llama.tex"
    ).exists()


def test_best_mask_directions() -> None:
    df = pd.DataFrame(
        [
            ("m", "a", 0.4, "perplexity", "c", 10.0, None),
            ("m", "b", 0.4, "perplexity", "c", 20.0, None),
            ("m", "a", 0.4, "acc", "t", 0.3, None),
            ("m", "b", 0.4, "acc", "t", 0.5, None),
            ("m", "a", 0.6, "perplexity", "c", 50.0, None),
            ("m", "dense", 0.0, "perplexity", "c", 1.0, None),
        ],
        columns=COLUMNS,
    )
    t = table1(df, "m")
    mask = best_mask(t)
    at = {(r.method, r.ratio): i for i, r in t.iterrows()}
    assert mask.at[at[("a", 0.4)], "ppl:c"] and not mask.at[at[("b", 0.4)], "ppl:c"]
    assert mask.at[at[("b", 0.4)], "acc:t"] and not mask.at[at[("a", 0.4)], "acc:t"]
    assert not mask.at[at[("a", 0.6)], "ppl:c"]  # alone at its ratio: nothing to beat
    assert not mask.loc[at[("dense", 0.0)]].any()


def test_figures_are_readable_images(report: Path) -> None:
    import matplotlib.image as mpimg

    figs = report / "figures"
    for model in MODELS:
        for stem in (
            "ppl_vs_ratio",
            "zeroshot_vs_ratio",
            "efficiency_vs_ratio",
            "compression_time",
        ):
            png = figs / f"{stem}_{model}.png"
            assert png.exists() and (figs / f"{stem}_{model}.pdf").exists(), png
            img = mpimg.imread(png)
            assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # only the allocating method gets a heatmap
    heatmaps = sorted(p.name for p in figs.glob("allocation_*.png"))
    assert heatmaps == [f"allocation_{m}_svd-llm-v2.png" for m in MODELS]


def test_published_vs_reproduced(report: Path) -> None:
    comp = pd.read_csv(report / "tables" / "published_vs_reproduced.csv")
    assert len(comp) > 0
    assert set(comp["model"]) == {"llama-7b"}  # ref-llama maps to a name with no rows
    row = comp[
        (comp["method"] == "svd-llm") & (comp["ratio"] == 0.4) & (comp["metric"] == "wikitext2_ppl")
    ]
    assert row["published"].tolist() == [13.73] and row["reproduced"].tolist() == [14.0]
    assert row["diff"].iloc[0] == pytest.approx(0.27)
    dense = comp[(comp["method"] == "dense") & (comp["metric"] == "wikitext2_ppl")]
    assert dense["published"].tolist() == [5.68]
    md = (report / "tables" / "published_vs_reproduced.md").read_text()
    assert "13.73" in md and "LLaMA-7B" in md


def test_published_percent_is_normalised_and_mapping_applies() -> None:
    pub = load_published(PUBLISHED)
    ada = pub[
        (pub["model"] == "LLaMA-2-7B")
        & (pub["method"] == "adasvd")
        & (pub["ratio"] == 0.4)
        & (pub["metric"] == "zero_shot_avg")
    ]
    assert ada["value"].tolist() == [pytest.approx(0.4263)]
    ours = pd.DataFrame([("l2", "adasvd", 0.4, "acc", "mean", 0.40, None)], columns=COLUMNS)
    assert compare(ours, pub).empty
    comp = compare(ours, pub, {"l2": "LLaMA-2-7B"})
    assert comp["diff"].tolist() == [pytest.approx(0.40 - 0.4263)]


def test_zero_shot_is_compared_over_the_papers_own_tasks() -> None:
    """SVD-LLM averages six tasks (no ARC-c): our mean over seven was set beside it. AdaSVD
    averages MMLU in, which we do not run: the row says it is not comparable."""
    pub = load_published(PUBLISHED)
    accs = {"openbookqa": 0.3, "arc_easy": 0.6, "arc_challenge": 0.1, "winogrande": 0.6,
            "hellaswag": 0.5, "piqa": 0.7, "mathqa": 0.2}  # fmt: skip
    rows = [("l", m, r, "acc", t, a, None) for m, r in (("svd-llm", 0.2), ("adasvd", 0.4))
            for t, a in accs.items()]  # fmt: skip
    rows += [("l", m, r, "acc", "mean", sum(accs.values()) / 7, None)
             for m, r in (("svd-llm", 0.2), ("adasvd", 0.4))]  # fmt: skip
    ours = pd.DataFrame(rows, columns=COLUMNS)

    def row(model: str, method: str, source: str) -> pd.Series:
        comp = compare(ours, pub, {"l": model})
        comp = comp[(comp["method"] == method) & comp["source"].str.startswith(source)]
        assert len(comp) == 1, comp
        return comp.iloc[0]

    six = sum(v for t, v in accs.items() if t != "arc_challenge") / 6
    svd_llm = row("LLaMA-7B", "svd-llm", "SVD-LLM (")
    assert svd_llm["reproduced"] == pytest.approx(six)
    assert "ours over the same tasks" in svd_llm["note"]
    ada = row("LLaMA-2-7B", "adasvd", "AdaSVD")
    assert ada["reproduced"] == pytest.approx(sum(accs.values()) / 7)
    assert "not comparable" in ada["note"] and "mmlu" in ada["note"]
    # SVD-LLM V2 names no task list in published.csv: our 7-task mean was set beside its
    # mean with an empty note, as if comparable
    v2 = row("LLaMA-7B", "svd-llm", "SVD-LLM V2")
    assert "not comparable" in v2["note"] and "does not record" in v2["note"], v2["note"]


def test_v2_ablation_rows_meet_their_published_rows() -> None:
    """SVD-LLM V2's ablation rows are named `svd-llm-v2 (allocation only)` / `(truncation
    only)` in published.csv, ours `svd-llm-v2-allocation` / `-truncation`: they never met."""
    pub = load_published(PUBLISHED)
    rows = [("l", m, 0.2, "perplexity", "wikitext2", v, None)
            for m, v in (("svd-llm-v2-allocation", 8.0), ("svd-llm-v2-truncation", 7.5))]  # fmt: skip
    comp = compare(pd.DataFrame(rows, columns=COLUMNS), pub, {"l": "LLaMA-7B"})
    got = dict(zip(comp["method"], comp["published"], strict=True))
    assert got == {"svd-llm-v2-allocation": 7.91, "svd-llm-v2-truncation": 7.43}, comp


def test_no_matching_rows_writes_a_clear_file(tmp_path: Path) -> None:
    results = make_tree(tmp_path)
    build_report(
        results,
        tmp_path / "out",
        published=PUBLISHED,
        model_names={"llama-7b": "Nope", "ref-llama": "Nope"},
        figures=False,
    )
    md = (tmp_path / "out" / "tables" / "published_vs_reproduced.md").read_text()
    assert "No matching rows" in md
    assert len(pd.read_csv(tmp_path / "out" / "tables" / "published_vs_reproduced.csv")) == 0


def test_missing_metrics_are_clear_errors(tmp_path: Path, caplog) -> None:
    skip = {("ref-llama", "svd", 0.4, "zeroshot")}
    results = make_tree(tmp_path, skip=skip)
    layout = Layout(tmp_path)
    missing = layout.zeroshot("ref-llama", "svd", 0.4)
    with caplog.at_level(logging.WARNING):
        df = collect(results)
    assert str(missing) in caplog.text
    assert not (
        (df["model"] == "ref-llama")
        & (df["method"] == "svd")
        & (df["ratio"] == 0.4)
        & (df["metric"] == "acc")
    ).any()
    with pytest.raises(MetricsError, match="zeroshot.json"):
        collect(results, require_complete=True)
    expected = [layout.ppl("ref-llama", "svd", 0.4), missing]
    with pytest.raises(
        MetricsError, match=r"1 expected metric file\(s\) missing:\n  .*r0.40/zeroshot.json"
    ):
        collect(results, expected=expected)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetricsError, match="no metric files"):
        collect(tmp_path / "empty")


def test_cli_reports_and_fails_cleanly(tmp_path: Path, capsys) -> None:
    results = make_tree(tmp_path)
    rc = main(
        [
            "report",
            "--results",
            str(results),
            "--out",
            str(tmp_path / "o"),
            "--published",
            str(PUBLISHED),
            "--model-names",
            "ref-llama=LLaMA-7B",
            "--no-figures",
        ]
    )
    assert rc == 0
    comp = pd.read_csv(tmp_path / "o" / "tables" / "published_vs_reproduced.csv")
    assert set(comp["model"]) == {"llama-7b", "ref-llama"}
    (results / "metrics" / "llama-7b" / "svd" / "r0.20" / "ppl.json").write_text("{not json")
    rc = main(["report", "--results", str(results), "--out", str(tmp_path / "o2"), "--no-figures"])
    err = capsys.readouterr().err
    assert rc == 2 and "ppl.json is not valid JSON" in err and "Traceback" not in err
    rc = main(["report", "--results", str(tmp_path / "nope"), "--no-figures"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["report", "--results", str(results), "--model-names", "oops", "--no-figures"])
    assert rc == 2 and "key=Name" in capsys.readouterr().err


def test_summary_is_small_and_headline(report: Path) -> None:
    """Issue 14.4: one summary metrics file, model -> method -> ratio -> headline metrics."""
    import json

    summary = json.loads((report / "summary.json").read_text())
    assert set(summary) == set(MODELS)
    runs = summary["llama-7b"]
    assert set(runs) == {"dense", "svd", "svd-llm", "svd-llm-v2"}
    assert set(runs["dense"]) == {"r0.00"} and set(runs["svd"]) == {"r0.20", "r0.40"}
    assert runs["svd-llm"]["r0.40"] == {"ppl-wikitext2": 14.0, "ppl-pydoc": 7.0, "acc": 0.505}
    n_values = sum(len(v) for m in summary.values() for r in m.values() for v in r.values())
    assert n_values == len(MODELS) * len(RUNS) * 3


def test_plot_data_one_series_per_method(report: Path) -> None:
    """Each model x headline metric: ratio rows, a column per method, starting at dense."""
    from svdzoo.report.summary import plot_file, plot_metrics

    for model in MODELS:
        for metric in plot_metrics(CORPORA, has_tasks=True):
            frame = pd.read_csv(plot_file(report, model, metric), dtype={"ratio": str})
            assert list(frame.columns) == ["ratio", "svd", "svd-llm", "svd-llm-v2"]
            assert list(frame.ratio) == ["0.00", "0.20", "0.40"]
            dense = RUNS[("dense", 0.0)] if metric == "ppl-wikitext2" else None
            if dense is not None:
                assert (frame.iloc[0, 1:] == dense).all()
                assert frame.loc[frame.ratio == "0.40", "svd"].item() == 5000.0


def test_diverged_perplexity_is_null_in_summary() -> None:
    import math

    from svdzoo.report.summary import summary

    tidy = pd.DataFrame(
        [("m", "svd", 0.8, "perplexity", "pydoc", math.inf, math.nan)], columns=COLUMNS
    )
    assert summary(tidy) == {"m": {"svd": {"r0.80": {"ppl-pydoc": None}}}}


# From a bug hunt on the report stage (each test fails on the code before its fix).


# every compressed method diverged at 0.40, none at 0.20
DIVERGED_AT_40 = {
    ("dense", 0.0): 6.0,
    ("svd", 0.2): 900.0,
    ("svd-llm", 0.2): 8.0,
    ("svd", 0.4): math.inf,
    ("svd-llm", 0.4): math.inf,
}


def _ppl_rows(values: dict[tuple[str, float], float]) -> pd.DataFrame:
    return pd.DataFrame(
        [("m", meth, r, "perplexity", "c", v, math.nan) for (meth, r), v in values.items()],
        columns=COLUMNS,
    )


def test_best_mask_never_bolds_a_diverged_perplexity() -> None:
    """Every compressed method diverged at 0.40: 'diverged' is not the best value there."""
    df = _ppl_rows(DIVERGED_AT_40)
    t = table1(df, "m")
    mask = best_mask(t)
    at = {(r.method, r.ratio): i for i, r in t.iterrows()}
    assert mask.at[at[("svd-llm", 0.2)], "ppl:c"]
    assert not mask.at[at[("svd", 0.4)], "ppl:c"]
    assert not mask.at[at[("svd-llm", 0.4)], "ppl:c"]


def test_diverged_points_stay_on_the_ppl_figure(tmp_path: Path) -> None:
    """A diverged run is drawn (at the top edge), not dropped: the x range covers its ratio."""
    from svdzoo.report import figures

    df = _ppl_rows(DIVERGED_AT_40)
    sub = df[df["model"] == "m"]
    fig = figures._metric_vs_ratio(
        sub, "perplexity", ["c"], logy=True, ylabel="perplexity", title="t"
    )
    try:
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        assert lo <= 0.4 <= hi, (lo, hi)
        texts = " ".join(t.get_text() for t in ax.texts)
        assert "diverged" in texts
    finally:
        figures._plt().close(fig)


def test_a_missing_run_breaks_the_line_and_many_methods_stay_apart(tmp_path: Path) -> None:
    """svd-llm without r0.40: its line ran straight from 0.2 to 0.6 as if it had been
    measured there; and past 10 methods the colours repeated (asvd and
    duo-svd-allocation drawn alike in the 16-method ablation figure)."""
    from svdzoo.report import figures

    values = {("dense", 0.0): 6.0, ("svd-llm", 0.2): 8.0, ("svd-llm", 0.6): 30.0}
    values |= {(f"m{i:02d}", r): 10.0 + i for i in range(12) for r in (0.2, 0.4, 0.6)}
    df = _ppl_rows(values)
    fig = figures._metric_vs_ratio(df, "perplexity", ["c"], logy=True, ylabel="p", title="t")
    try:
        lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
        x, y = lines["svd-llm"].get_data()
        assert list(x) == [0.2, 0.4, 0.6] and math.isnan(y[1]), (x, y)
        looks = [(ln.get_color(), ln.get_marker(), ln.get_linestyle())
                 for name, ln in lines.items() if name != "dense"]  # fmt: skip
        assert len(looks) == 13 and len(set(looks)) == 13, looks
    finally:
        figures._plt().close(fig)


def test_uniform_ranks_get_no_allocation_heatmap() -> None:
    """Rounding spreads a uniform method's per-matrix ratios (plain svd-llm on SmolLM2:
    0.3958-0.4028 at 40 %), and every method got a heatmap of that noise."""
    from svdzoo.report import figures

    def manifest(ranks: list[int]) -> dict:
        shapes = [(576, 576), (192, 576), (1536, 576)]
        mods = {}
        for i, ((m, n), k) in enumerate(zip(shapes * 2, ranks, strict=True)):
            mods[f"model.layers.{i // 3}.t{i % 3}"] = {
                "m": m, "n": n, "rank": k, "dense": False, "layer": i // 3, "type": f"t{i % 3}",
                "ratio": 1 - k * (m + n) / (m * n),
            }  # fmt: skip
        return {"ratio": 0.4, "modules": mods}

    floor = [
        math.floor(0.6 * m * n / (m + n)) for m, n in [(576, 576), (192, 576), (1536, 576)] * 2
    ]
    assert not figures.is_allocating(manifest([k + (i % 2) for i, k in enumerate(floor)]))
    assert figures.is_allocating(manifest([k + 20 * (i % 2) for i, k in enumerate(floor)]))
    # and from efficiency.json's copy, all the report has once the model is deleted
    # (keep_compressed: false): it kept no shapes or ranks, so the heatmap came back
    from svdzoo.evaluation.efficiency import manifest_summary

    summary = manifest_summary(manifest([k + (i % 2) for i, k in enumerate(floor)]))
    assert not figures.is_allocating(summary)


def test_report_files_are_the_same_bytes_every_run(report: Path, tmp_path: Path) -> None:
    """The PDFs held their CreationDate, so every report was a new output to DVC."""
    again = tmp_path / "again"
    shutil.copytree(report / "metrics", again / "metrics")
    shutil.copytree(report / "compressed", again / "compressed")
    build_report(again, again, published=PUBLISHED, model_names={"ref-llama": "NoSuchModel"})
    for sub in ("figures", "tables", "plots"):
        for f in sorted((report / sub).rglob("*")):
            if f.is_file():
                twin = again / f.relative_to(report)
                assert f.read_bytes() == twin.read_bytes(), f


def test_published_csv_with_a_dash_is_a_clear_error(tmp_path: Path, capsys) -> None:
    results = make_tree(tmp_path)
    pub = tmp_path / "pub.csv"
    pub.write_text(
        PUBLISHED.read_text().replace(
            "LLaMA-7B,svd,0.2,20061,,18800", "LLaMA-7B,svd,0.2,20061,-,18800"
        )
    )
    rc = main(
        ["report", "--results", str(results), "--out", str(tmp_path / "o"),
         "--published", str(pub), "--no-figures"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "ptb_ppl" in err and "line 3" in err and "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00source,table\n", b'"unclosed,a\n1,2'])
def test_an_unreadable_published_csv_is_one_line(tmp_path: Path, capsys, content) -> None:
    """An empty file, bytes that are not UTF-8 and a broken quote were pandas tracebacks."""
    results = make_tree(tmp_path)
    pub = tmp_path / "pub.csv"
    pub.write_bytes(content)
    rc = main(
        ["report", "--results", str(results), "--out", str(tmp_path / "o"),
         "--published", str(pub), "--no-figures"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "pub.csv" in err and "Traceback" not in err, err


def test_rerun_removes_stale_tables_and_figures(tmp_path: Path) -> None:
    """A second report must not leave the first one's files beside its own: here the
    published comparison said 14.0 while table1 said 20.0, and a deleted model's tables
    and figures stayed."""
    results = make_tree(tmp_path)
    build_report(results, results, published=PUBLISHED)
    path = Layout(tmp_path).ppl("llama-7b", "svd-llm", 0.4)
    obj = json.loads(path.read_text())
    obj["perplexity"]["wikitext2"] = 20.0
    write_json(path, obj)
    shutil.rmtree(results / "metrics" / "ref-llama")
    shutil.rmtree(results / "compressed" / "ref-llama")
    build_report(results, results)  # no published comparison this time
    t1 = pd.read_csv(results / "tables" / "table1_llama-7b.csv")
    assert t1.query("method == 'svd-llm' and ratio == 0.4")["ppl:wikitext2"].tolist() == [20.0]
    assert not (results / "tables" / "published_vs_reproduced.csv").exists()
    assert not list((results / "tables").glob("*ref-llama*"))
    assert not list((results / "figures").glob("*ref-llama*"))
    assert (results / "figures" / "ppl_vs_ratio_llama-7b.png").exists()


def test_report_removes_only_the_files_it_wrote(tmp_path: Path) -> None:
    """A report into a folder of the user's deleted every CSV under its plots/ and every
    file named like a table or figure (tables/summary_*, figures/ppl_vs_ratio_*): only the
    files an earlier report recorded are stale. Without figures, earlier figures stay."""
    results = make_tree(tmp_path)
    out = tmp_path / "paper"
    mine = {
        out / "plots" / "fig1" / "data.csv": b"x,y\n1,2\n",
        out / "tables" / "summary_of_related_work.md": b"my notes\n",
        out / "figures" / "ppl_vs_ratio_sketch.png": b"my drawing",
        out / "notes.txt": b"keep\n",
    }
    for path, data in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    build_report(results, out)
    shutil.rmtree(results / "metrics" / "ref-llama")
    shutil.rmtree(results / "compressed" / "ref-llama")
    build_report(results, out)  # ref-llama's tables, figures and plot data are stale now
    assert {path: path.read_bytes() for path in mine if path.exists()} == mine
    assert not [p for p in out.rglob("*ref-llama*") if p.is_file()]
    assert (out / "tables" / "table1_llama-7b.csv").exists()
    figures = sorted((out / "figures").glob("*llama-7b*"))
    build_report(results, out, figures=False)
    assert figures and sorted((out / "figures").glob("*llama-7b*")) == figures
    assert {path: path.read_bytes() for path in mine if path.exists()} == mine


def test_non_canonical_ratio_tag_is_not_silently_merged(tmp_path: Path, caplog) -> None:
    """r0.4 and r0.40 parse to one ratio: one run's numbers replaced the other's unseen."""
    metrics = tmp_path / "results" / "metrics" / "m"
    write_json(metrics / "svd" / "r0.40" / "ppl.json", {"perplexity": {"c": 100.0}})
    write_json(metrics / "svd" / "r0.4" / "ppl.json", {"perplexity": {"c": 50.0}})
    write_json(metrics / "svd" / "rnan" / "ppl.json", {"perplexity": {"c": 3.0}})
    with caplog.at_level(logging.WARNING):
        df = collect(tmp_path / "results")
    assert "r0.4/ppl.json" in caplog.text and "rnan/ppl.json" in caplog.text
    assert df["ratio"].map(math.isfinite).all()
    assert df["value"].tolist() == [100.0]


def test_real_model_claim_factor_below_one_is_not_zero() -> None:
    mod = load_benchmark("bench_real_model")
    df = pd.DataFrame(
        [
            ("x", meth, 0.8, "perplexity", "pydoc", v, math.nan)
            for meth, v in (("svd", 95614666.36), ("asvd", 5384807645.4), ("svd-llm", 2454.41))
        ],
        columns=COLUMNS,
    )
    row = next(ln for ln in mod.claims(df, ["pydoc"], ["svd", "asvd", "svd-llm"]) if "80%" in ln)
    assert "x0.0)" not in row and "x0.018)" in row, row


def test_real_model_dense_note_names_each_models_own_release(tmp_path: Path) -> None:
    """The note said Q4_1 for every model, also for Gemma 3's Q4_K_M release."""
    mod = load_benchmark("bench_real_model")
    source = tmp_path / "data" / "models" / "g" / "svdzoo_source.json"
    write_json(source, {"weights": "Q4_K_M-dequantized float32 release"})
    assert (
        mod.dense_note(tmp_path, "g")
        == " The dense model is the Q4_K_M-dequantized float32 release."
    )
    assert mod.dense_note(tmp_path, "trained-here") == ""


@pytest.mark.usefixtures("one_thread")
def test_achieved_ratio_and_allocation_survive_a_deleted_compressed_model(
    tmp_path: Path,
) -> None:
    """keep_compressed: false deletes results/compressed/... once evaluated; the report lost
    the achieved ratios and the allocation heatmaps of every such run."""
    from helpers import random_tiny

    from svdzoo.evaluation.efficiency import measure_efficiency

    results = make_tree(tmp_path)
    model = random_tiny("llama", max_position_embeddings=64)
    layout = Layout(tmp_path)
    for mdl in ("llama-7b", "ref-llama"):
        for ratio in (0.2, 0.4):
            eff = measure_efficiency(
                model, batch_sizes=(1,), prompt_len=4, gen_len=1, warmup=0, repeats=1,
                manifest=_manifest("svd-llm-v2", ratio),
            )  # fmt: skip
            labels = {"model": mdl, "method": "svd-llm-v2", "ratio": ratio}
            write_json(layout.efficiency(mdl, "svd-llm-v2", ratio), {**labels, **eff})
    shutil.rmtree(results / "compressed")  # what Snakemake's temp() does
    build_report(results, tmp_path / "out")
    df = collect(results)
    got = df[(df["method"] == "svd-llm-v2") & (df["metric"] == "achieved_ratio")]
    assert sorted(got["ratio"].tolist()) == [0.2, 0.2, 0.4, 0.4]
    assert (tmp_path / "out" / "figures" / "allocation_llama-7b_svd-llm-v2.png").exists()


@pytest.mark.parametrize(
    ("kind", "content", "message"),
    [
        ("ppl", {"perplexity": "abc"}, "perplexity should be an object"),
        ("ppl", {"perplexity": {"c": "abc"}}, r"perplexity.c is \"abc\", not a number"),
        ("ppl", {"perplexity": {"c": -3}}, r"perplexity.c is -3, outside \[1, inf\]"),
        ("ppl", {"perplexity": {"c": 5.0}, "diverged": "c"}, "diverged should be a list"),
        ("zeroshot", {"tasks": {"t": {"acc": 1.5}}}, r"tasks.t.acc is 1.5, outside \[0, 1\]"),
        ("zeroshot", {"tasks": {"t": 0.5}}, "tasks.t should be an object"),
        ("efficiency", {"throughput": [{"batch_size": "one"}]}, 'batch_size is "one"'),
        ("efficiency", {"weight_bytes": True}, "weight_bytes is true, not a number"),
    ],
)
def test_malformed_metric_values_are_named_not_silent(
    tmp_path: Path, kind: str, content: dict, message: str
) -> None:
    """`{"c": "abc"}` became NaN in every table and a string in the place of a dict an
    AttributeError traceback; a value no metric can take (perplexity -3, accuracy 1.5) a row."""
    results = tmp_path / "results"
    write_json(results / "metrics" / "m" / "svd" / "r0.40" / f"{kind}.json", content)
    with pytest.raises(MetricsError, match=message):
        collect(results)
    bad = results / "metrics" / "m" / "svd" / "r0.40" / f"{kind}.json"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(MetricsError, match="is not valid JSON"):
        collect(results)


def test_out_never_replaces_a_file_no_report_wrote(tmp_path: Path, capsys) -> None:
    """`--out` into a folder of the user's replaced their metrics.csv and any table of a
    report file's name. Refused before anything is written, unless --force; a report's own
    files (recorded) and the results tree itself (both workflow engines) are replaced."""
    results = make_tree(tmp_path)
    paper = tmp_path / "paper"
    mine = {paper / "metrics.csv": b"my,numbers\n", paper / "tables" / "table1_ref-llama.md": b"x"}
    for path, data in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    before = sorted(p.relative_to(paper) for p in paper.rglob("*"))
    argv = ["report", "--results", str(results), "--out", str(paper), "--no-figures"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "would replace 2 file(s)" in err and "tables/table1_ref-llama.md" in err, err
    assert "--force" in err and "Traceback" not in err
    assert sorted(p.relative_to(paper) for p in paper.rglob("*")) == before  # no staging left
    assert {p: p.read_bytes() for p in mine} == mine
    assert main([*argv, "--force"]) == 0
    assert (paper / "metrics.csv").read_bytes() != mine[paper / "metrics.csv"]
    assert main(argv) == 0  # its own files now
    # the results tree is svdzoo's own: a fresh clone has plots/ and summary.json from git
    # and no record; a later checkout brings back plot data a record may not list
    (results / "plots" / "llama-7b").mkdir(parents=True)
    (results / "plots" / "llama-7b" / "acc.csv").write_text("ratio,svd\n0.20,0.5\n")
    (results / "summary.json").write_text("{}\n")
    build_report(results, results, figures=False)
    (results / "plots" / "llama-7b" / "acc.csv").unlink()
    (results / "plots" / "ref-llama" / "acc.csv").write_text("from git\n")
    (results / ".svdzoo-report.json").write_text('{"files": []}\n')
    build_report(results, results, figures=False)
    assert (results / "plots" / "ref-llama" / "acc.csv").read_text() != "from git\n"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        build_report(results, tmp_path / "afile", figures=False)


@pytest.mark.parametrize(
    "where, needle",
    [
        ("compressed/llama-7b/svd-llm/r0.40", "is inside"),
        ("metrics/llama-7b/asvd", "is inside"),
        ("metrics", "is inside"),
        ("model", "holds config.json"),
        ("run-metrics", "holds ppl.json"),
    ],
)
def test_out_in_an_input_or_a_model_is_refused_even_with_force(
    tmp_path: Path, capsys, where: str, needle: str
) -> None:
    """`report --out` into a compressed model's folder, a run's metrics or results/metrics
    itself wrote the report beside them (exit 0): a later `compress --out` there was
    refused and an upload of the model carried the report; all are DVC outputs."""
    results = make_tree(tmp_path)
    out = {"model": tmp_path / "model", "run-metrics": tmp_path / "run-metrics"}.get(
        where, results / where
    )
    out.mkdir(parents=True, exist_ok=True)
    if where == "model":
        (out / "config.json").write_text("{}")
    if where == "run-metrics":
        (out / "ppl.json").write_text("{}")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    argv = ["report", "--results", str(results), "--out", str(out), "--no-figures", "--force"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_one_report_at_a_time_and_a_killed_one_leaves_nothing(tmp_path: Path) -> None:
    """The report is staged in `.svdzoo-report.<pid>.<random>.tmp` inside --out: a killed
    report's staging folder is removed by the next, and one still held (a report running)
    refuses a second writer rather than interleaving their files."""
    import fcntl
    import os

    results = make_tree(tmp_path)
    out = tmp_path / "paper"
    stale = out / ".svdzoo-report.99999.deadbeef.tmp"
    (stale / "tables").mkdir(parents=True)
    (stale / "tables" / "half.csv").write_text("a,b\n")
    build_report(results, out, figures=False)
    assert not stale.exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    live = out / f".svdzoo-report.{os.getpid()}.cafebabe.tmp"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputError, match="being written by another process"):
            build_report(results, out, figures=False)
    finally:
        os.close(fd)
    build_report(results, out, figures=False)  # the holder is gone: its folder is stale
    assert not live.exists()


def test_a_report_stopped_midway_is_finished_by_the_next(tmp_path: Path, monkeypatch) -> None:
    """Files moved in before a failure were in no record, so every later report refused
    them as the user's. Across file systems (`tables/` a link to another disk) the rename
    fails with EXDEV: the file is copied beside its place and renamed there."""
    import errno
    import os

    results = make_tree(tmp_path)
    out = tmp_path / "paper"
    real_replace, calls = os.replace, []

    def failing(src, dst):
        if ".svdzoo-report." in str(src) and ".svdzoo-report." not in str(dst):
            calls.append(dst)  # a move out of the staging folder
            if len(calls) == 4:
                raise OSError(errno.EIO, "I/O error")
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="I/O error"):
        build_report(results, out, figures=False)
    assert (out / "metrics.csv").exists()  # moved (copied, then renamed) before the failure
    monkeypatch.setattr(os, "replace", real_replace)
    build_report(results, out, figures=False)  # no refusal: the record named them
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    recorded = json.loads((out / ".svdzoo-report.json").read_text())["files"]
    assert sorted(recorded) == sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name[0] != "."
    )


def test_an_edited_sealed_compressed_manifest_is_refused(tmp_path: Path, capsys) -> None:
    """A sealed manifest edited after compress wrote it (its ratio, its allocation) went
    into the tables and heatmaps; one whose seal matches (or that has none) is read."""
    import json

    from svdzoo.calibration.cache import seal
    from svdzoo.paths import Layout

    results = make_tree(tmp_path)
    path = Layout(results.parent).compressed_manifest(MODELS[0], "svd-llm", 0.4)
    manifest = seal(json.loads(path.read_text()))
    path.write_text(json.dumps(manifest))
    argv = ["report", "--results", str(results), "--force"]  # the figures read manifests
    assert main([*argv, "--out", str(tmp_path / "ok")]) == 0
    path.write_text(json.dumps({**manifest, "ratio": 0.2}))
    rc = main([*argv, "--out", str(tmp_path / "edited")])
    err = capsys.readouterr().err
    assert rc == 2 and "edited after it was written" in err and "Traceback" not in err


def test_an_edited_manifest_is_refused_without_figures_too(tmp_path: Path, capsys) -> None:
    """With --no-figures the tables read the manifest unsealed: an edited achieved_ratio
    went into them."""
    from svdzoo.calibration.cache import seal

    results = make_tree(tmp_path)
    path = Layout(results.parent).compressed_manifest(MODELS[0], "svd-llm", 0.4)
    manifest = seal(json.loads(path.read_text()))
    path.write_text(json.dumps({**manifest, "achieved_ratio": 0.9}))
    argv = ["report", "--results", str(results), "--no-figures", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "edited after it was written" in capsys.readouterr().err


def test_metrics_of_an_earlier_compression_are_refused(tmp_path: Path) -> None:
    """Compressed again, not evaluated again: the old perplexity sat beside the new
    manifest's ratios. Each metric file names the manifest it measured."""
    from svdzoo.calibration.cache import seal

    results = make_tree(tmp_path)
    layout = Layout(results.parent)
    path = layout.compressed_manifest(MODELS[0], "svd-llm", 0.4)
    old = seal(json.loads(path.read_text()))
    path.write_text(json.dumps(old))
    ppl = layout.ppl(MODELS[0], "svd-llm", 0.4)
    obj = json.loads(ppl.read_text())
    ppl.write_text(json.dumps({**obj, "compressed_manifest_sha256": old["manifest_sha256"]}))
    collect(results)  # measured on the model that is there
    path.write_text(json.dumps(seal({**old, "compression_time_s": 99.0})))  # compressed again
    with pytest.raises(MetricsError, match="earlier compressed model"):
        collect(results)


@pytest.mark.parametrize(
    "kind, base, change",
    [
        ("ppl", {}, {"seqlen": 64}),
        ("ppl", {}, {"n_windows": {"wikitext2": 2, "pydoc": 4}}),
        ("ppl", {"dtype": "float32"}, {"dtype": "bfloat16"}),
        ("zeroshot", {"n_samples": {"arc_easy": 8}}, {"n_samples": {"arc_easy": 4}}),
        # an older file (no n_samples) missing a task: its mean is over other tasks
        ("zeroshot", {}, {"tasks": {"task_a": {"acc": 0.5, "acc_stderr": 0.02}}}),
        ("efficiency", {"dtype": "float32"}, {"dtype": "bfloat16"}),
        ("efficiency", {"device": "cpu"}, {"device": "cuda:0"}),
        ("efficiency", {"prompt_len": 128}, {"prompt_len": 120}),
    ],
)
def test_runs_evaluated_differently_are_not_compared(tmp_path: Path, kind, base, change) -> None:
    """One method scored on other windows or other tasks was bolded against the rest; one
    measured in bfloat16 or on another device showed half the weight bytes or another speed
    as if compression had made them."""
    results = make_tree(tmp_path)
    layout = Layout(results.parent)
    for method, ratio in RUNS:  # every run first records the setting as measured
        f = getattr(layout, kind)(MODELS[0], method, ratio)
        f.write_text(json.dumps({**json.loads(f.read_text()), **base}))
    collect(results)
    f = getattr(layout, kind)(MODELS[0], "svd", 0.4)
    f.write_text(json.dumps({**json.loads(f.read_text()), **change}))
    with pytest.raises(MetricsError, match="evaluated differently"):
        collect(results)


def test_a_metric_file_of_another_model_is_named(tmp_path: Path, caplog) -> None:
    results = make_tree(tmp_path)
    f = Layout(results.parent).ppl(MODELS[0], "dense", 0.0)
    f.write_text(json.dumps({**json.loads(f.read_text()), "model": "other"}))
    with caplog.at_level(logging.WARNING):
        collect(results)
    assert "says model='other'" in caplog.text


@pytest.mark.parametrize("key, value", [("ratio", 0.5), ("method", "svd")])
def test_a_metric_file_of_another_run_is_refused(tmp_path: Path, key, value) -> None:
    """svd-llm's r0.40 metrics copied to r0.50 were read with a warning and made a second
    svd-llm row at 0.50 holding the 0.40 numbers."""
    results = make_tree(tmp_path)
    f = Layout(results.parent).ppl(MODELS[0], "svd-llm", 0.4)
    f.write_text(json.dumps({**json.loads(f.read_text()), key: value}))
    with pytest.raises(MetricsError, match=f"says {key}=.* it is another run's file"):
        collect(results)


def test_a_corpus_given_by_path_stays_inside_the_plots_folder(tmp_path: Path) -> None:
    from svdzoo.report.summary import plot_file

    f = plot_file(tmp_path / "out", "tiny", "ppl-../../../corpus.txt")
    assert f.parent == tmp_path / "out" / "plots" / "tiny" and "/" not in f.name
    assert plot_file(tmp_path, "m", "ppl-pydoc").name == "ppl-pydoc.csv"
