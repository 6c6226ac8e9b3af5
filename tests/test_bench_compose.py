"""The composition report's goal check: a time cap over only the combined methods that
happen to be timed would be too low, so it must say "unknown" instead of yes or NO."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_compose")


def rows(entries: list[tuple[str, float, str, float]], seed: int = 3) -> pd.DataFrame:
    df = pd.DataFrame(
        [("smollm2-135m", m, r, metric, "pydoc" if metric == "perplexity" else "-", v)
         for m, r, metric, v in entries],
        columns=["model", "method", "ratio", "metric", "dataset", "value"],
    )  # fmt: skip
    df["seed"], df["source"] = seed, "workflow"
    return df


def scene(bench, duo_cpu: float | None, mine_cpu: float = 500.0, cpu: str = "") -> pd.DataFrame:
    cpu = cpu or bench.CPU
    out = [
        ("adasvd", 0.4, "perplexity", 58.0),
        ("adasvd", 0.4, cpu, 200.0),
        ("duo-svd-independent", 0.4, "perplexity", 51.0),
        ("svdzoo-duo-ada", 0.4, "perplexity", 47.0),
        ("svdzoo-duo-ada", 0.4, cpu, mine_cpu),
    ]
    if duo_cpu is not None:
        out.append(("duo-svd-independent", 0.4, cpu, duo_cpu))
    return rows(out)


def goal_row(bench, df: pd.DataFrame) -> str:
    lines = bench.goal(df, "svdzoo-duo-ada", "pydoc", ["adasvd", "svdzoo-duo-ada"])
    (row,) = [line for line in lines if line.startswith("| 40%")]
    return row


def test_the_cap_is_twice_the_slowest_combined_method(bench):
    assert goal_row(bench, scene(bench, duo_cpu=300.0)).endswith("| 500 | 600 | yes |")
    assert goal_row(bench, scene(bench, duo_cpu=240.0)).endswith("| 500 | 480 | NO |")


def test_an_untimed_combined_method_makes_the_verdict_unknown(bench):
    row = goal_row(bench, scene(bench, duo_cpu=None))
    assert row.endswith("| 500 | ≥ 400 | unknown: no CPU time for `duo-svd-independent` |")


def test_the_perplexity_half_compares_with_the_best_paper_method(bench):
    df = scene(bench, duo_cpu=300.0)
    df.loc[(df.method == "svdzoo-duo-ada") & (df.metric == "perplexity"), "value"] = 60.0
    row = goal_row(bench, df)
    assert "| adasvd | 58.00 | NO |" in row


def test_a_saved_csv_reloads_one_seed_and_rejects_other_files(bench, tmp_path):
    both = pd.concat([scene(bench, 300.0), rows([("adasvd", 0.4, "perplexity", 55.0)], seed=4)])
    path = tmp_path / "compose.csv"
    both.to_csv(path, index=False)
    again = bench.load(path, {}, 4)
    assert list(again.value) == [55.0]
    with pytest.raises(SystemExit, match="no rows for calibration seed 5"):
        bench.load(path, {}, 5)
    both.drop(columns="source").to_csv(path, index=False)
    with pytest.raises(SystemExit, match="not a compose CSV"):
        bench.load(path, {}, 3)


@pytest.mark.parametrize(
    ("mine", "duo", "verdict"),
    [
        (500.0, 300.0, "yes (sampled CPU: holds with its 30 s margin)"),  # 530 <= 600
        (580.0, 300.0, "unsure: sampled CPU times, within their 30 s margin"),
        (640.0, 300.0, "unsure: sampled CPU times, within their 30 s margin"),  # cap to 660
        (661.0, 300.0, "NO (sampled CPU: holds with its 30 s margin)"),
    ],
)
def test_a_verdict_on_sampled_cpu_times_holds_over_their_margin(bench, mine, duo, verdict):
    row = goal_row(bench, scene(bench, duo_cpu=duo, mine_cpu=mine, cpu=bench.SAMPLED))
    assert row.endswith(f"| ≥ {mine:.0f} | ≥ {2 * duo:.0f} | {verdict} |")


def test_an_exact_pick_against_a_sampled_cap_still_gets_a_verdict(bench):
    df = scene(bench, duo_cpu=None, mine_cpu=500.0)
    df = pd.concat([df, rows([("duo-svd-independent", 0.4, bench.SAMPLED, 240.0)])])
    assert goal_row(bench, df).endswith("| 500 | ≥ 480 | unsure: sampled CPU times, within their 30 s margin |")  # fmt: skip
    df.loc[df.metric == bench.SAMPLED, "value"] = 260.0
    assert goal_row(bench, df).endswith("| 500 | ≥ 520 | yes (sampled CPU: holds with its 30 s margin) |")  # fmt: skip


def test_the_exact_cpu_time_is_read_from_the_log_and_only_then_from_snakemake(bench, tmp_path):
    from svdzoo.usage import Usage

    results = tmp_path / "results"
    for method, logged in (("svd-llm", True), ("adasvd", False)):
        job = f"smollm2-135m-{method}-r0.40"
        tsv = results / "benchmarks" / "compress" / f"{job}.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text("s\tcpu_time\n80.0\t47.0\n")
        log = results / "logs" / "compress" / f"{job}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(
            "INFO svdzoo.cli: " + Usage("compress", 80.5, 77.25, 900.0).line() if logged else ""
        )
    params = {"methods": ["svd-llm", "adasvd"], "ratios": [0.4]}
    assert bench.cpu_rows(results, params) == [
        ("smollm2-135m", "svd-llm", 0.4, bench.CPU, "-", 77.25),
        ("smollm2-135m", "adasvd", 0.4, bench.SAMPLED, "-", 47.0),
    ]


def test_runs_of_another_calibration_seed_are_refused(bench, tmp_path):
    """compose-seed4.yaml run in compose.yaml's project replaced the seed-3 runs (their paths
    name no seed), which the report then labelled seed 3."""
    import json

    run = tmp_path / "results" / "compressed" / bench.MODEL / "svd-llm" / "r0.40"
    run.mkdir(parents=True)
    manifest = {"statistics": {"gram": {"corpus": "pydoc", "seed": 4}}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="another seed than 3: .*seed \\[4\\]"):
        bench.check_seed(tmp_path / "results", {}, 3)
    bench.check_seed(tmp_path / "results", {}, 4)
