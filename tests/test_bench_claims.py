"""The cross-model claims table: each seed method's perplexity over SVD-LLM's, matched on
model, ratio and corpus, and a verdict that says where the claim holds."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_claims")


def rows(model: str, values: dict[tuple[str, float, str], float]) -> list[tuple]:
    return [(model, m, r, "perplexity", c, v) for (m, r, c), v in values.items()]


def test_claims_are_matched_per_model_ratio_and_corpus(bench) -> None:
    df = pd.DataFrame(
        rows("a", {("svd-llm", 0.4, "x"): 10.0, ("adasvd", 0.4, "x"): 5.0, ("svd", 0.4, "x"): 1e6})
        + rows("b", {("svd-llm", 0.4, "x"): 10.0, ("adasvd", 0.4, "x"): 20.0})
        # a ratio SVD-LLM lacks is dropped, not compared with another ratio's number
        + rows("b", {("adasvd", 0.6, "x"): 1.0})
        + [("a", "adasvd", 0.4, "compression_time_s", "-", 3.0)],
        columns=["model", "method", "ratio", "metric", "dataset", "value"],
    )
    claims = bench.against_base(df)
    assert claims[["model", "method", "ratio_to_svd_llm"]].values.tolist() == [
        ["a", "adasvd", 0.5],
        ["b", "adasvd", 2.0],
    ]  # plain SVD is a baseline, not a seed method: not a claim
    table = bench.verdicts(claims)
    assert table.loc[("adasvd", 0.4), "claim"] == "mixed (1 of 2)"
    assert table.loc[("adasvd", 0.4), "a x"] == "x0.50"


def test_other_methods_are_compared_when_named(bench, tmp_path) -> None:
    """`--methods` puts ablations (a seed method's parts alone) in the same table and
    heatmap; only the named methods appear."""
    csv = tmp_path / "m.csv"
    pd.DataFrame(
        rows(
            "a",
            {("svd-llm", 0.2, "x"): 10.0, ("adasvd-cr", 0.2, "x"): 7.5, ("adasvd", 0.2, "x"): 5.0},
        ),
        columns=["model", "method", "ratio", "metric", "dataset", "value"],
    ).to_csv(csv, index=False)
    out = tmp_path / "parts"
    assert bench.main(["--csv", str(csv), "--methods", "adasvd-cr", "--out", str(out)]) == 0
    got = pd.read_csv(out.with_suffix(".csv"))
    assert got[["method", "ratio_to_svd_llm"]].values.tolist() == [["adasvd-cr", 0.75]]
    assert out.with_suffix(".md").read_text().startswith("# adasvd-cr against SVD-LLM")
    assert out.with_suffix(".png").stat().st_size > 0
    for bad in (["ressvd"], ["adasvd", "adasvd-crr"], ["svd-llm"]):
        with pytest.raises(SystemExit):  # absent, mistyped or the base itself: an error
            bench.main(["--csv", str(csv), "--methods", *bad, "--out", str(out)])


def test_one_collapsed_method_does_not_wash_out_the_colours(bench, tmp_path, monkeypatch) -> None:
    """ASVD without its allocation is 1e7 x SVD-LLM's perplexity on Gemma: the colour scale
    saturates at CLIP_LOG2, so 0.5 x and 2 x stay visibly blue and red."""
    seen = {}

    def imshow(self, data, **kw):
        seen["vmax"] = kw["vmax"]
        return real(self, data, **kw)

    import matplotlib.axes

    real = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", imshow)
    claims = pd.DataFrame(
        {
            "model": "a",
            "method": ["adasvd", "asvd-uniform"],
            "ratio": 0.2,
            "corpus": "x",
            "ratio_to_svd_llm": [0.5, 1e7],
        }
    )
    bench.figure(claims, tmp_path / "c", ("adasvd", "asvd-uniform"))
    assert seen["vmax"] == bench.CLIP_LOG2
    bench.figure(claims.iloc[:1], tmp_path / "d", ("adasvd",))
    assert seen["vmax"] == 1.0  # a small spread keeps its own scale (at least 2 x)
