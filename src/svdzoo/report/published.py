"""Published vs reproduced: the papers' numbers (data/published.csv) beside ours.

Rows join on model, method, ratio and metric. Our model keys (from params.yaml, e.g.
`llama-7b`) map to the papers' names through `model_names` (`{"llama-7b": "LLaMA-7B"}`);
without an entry a key matches a published name case-insensitively. Our `dense` method
is the papers' `original`. Metrics: `wikitext2_ppl`, `ptb_ppl`, `c4_ppl` (our corpora
`wikitext2`, `ptb`, `c4`) and `zero_shot_avg` (our mean accuracy, a fraction). AdaSVD
reports accuracy in percent: any `zero_shot_avg` above 1 is divided by 100. The papers
average different task sets (a source's `note`: "zero_shot_avg over ..."): ours is taken
over the same tasks, or the row says it is not comparable (`_same_tasks`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from svdzoo.errors import SvdzooError
from svdzoo.io import not_there, write_text
from svdzoo.paths import DENSE

CORPUS_COLUMNS = {"wikitext2": "wikitext2_ppl", "ptb": "ptb_ppl", "c4": "c4_ppl"}
ZERO_SHOT = "zero_shot_avg"
METRICS = (*CORPUS_COLUMNS.values(), ZERO_SHOT)
METHOD_ALIASES = {  # our name -> the published table's
    DENSE: "original",
    "svd-llm-v2-allocation": "svd-llm-v2 (allocation only)",  # its Table 6 ablation
    "svd-llm-v2-truncation": "svd-llm-v2 (truncation only)",
}
OUT_COLUMNS = [
    "model",
    "published_model",
    "method",
    "ratio",
    "metric",
    "published",
    "reproduced",
    "diff",
    "rel_diff",
    "source",
    "table",
    "note",
]


class PublishedError(SvdzooError, ValueError):
    pass


def load_published(path: str | Path) -> pd.DataFrame:
    """Long table: source, table, model, method, ratio, metric, value, note."""
    path = Path(path)
    if not path.is_file():
        raise PublishedError(f"published results file {path} {not_there(path, 'file')}")
    try:
        wide = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        # an empty file, a ragged row, bytes that are not UTF-8: pandas' traceback before
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PublishedError(f"{path}: not a readable CSV ({why})") from exc
    need = {"source", "table", "model", "method", "ratio", *METRICS}
    missing = need - set(wide.columns)
    if missing:
        raise PublishedError(f"{path}: missing column(s) {sorted(missing)}")
    for col in ("ratio", *METRICS):  # a clear error, not pandas' traceback, on a bad cell
        num = pd.to_numeric(wide[col], errors="coerce")
        bad = num.isna() & (wide[col].notna() | (col == "ratio"))
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise PublishedError(
                f"{path}: line {i + 2}, column {col!r} holds {wide[col].iloc[i]!r}, not a "
                "number (leave a metric's cell empty where the paper reports none)"
            )
        wide[col] = num
    if "note" not in wide.columns:
        wide["note"] = ""
    long = wide.melt(
        id_vars=["source", "table", "model", "method", "ratio", "note"],
        value_vars=list(METRICS),
        var_name="metric",
        value_name="value",
    ).dropna(subset=["value"])
    long["value"] = long["value"].astype(float)
    pct = (long["metric"] == ZERO_SHOT) & (long["value"] > 1.0)
    long.loc[pct, "value"] = long.loc[pct, "value"] / 100.0
    long["note"] = long["note"].fillna("")
    long["ratio"] = long["ratio"].astype(float).round(4)
    return long.reset_index(drop=True)


def ours_long(tidy: pd.DataFrame) -> pd.DataFrame:
    """Our tidy metrics reduced to the published metrics: model, method, ratio, metric, value."""
    ppl = tidy[(tidy["metric"] == "perplexity") & tidy["dataset"].isin(list(CORPUS_COLUMNS))]
    ppl = ppl.assign(metric=ppl["dataset"].map(CORPUS_COLUMNS))
    acc = tidy[(tidy["metric"] == "acc") & (tidy["dataset"] == "mean")].assign(metric=ZERO_SHOT)
    out = pd.concat([ppl, acc])[["model", "method", "ratio", "metric", "value"]]
    out = out.assign(
        method_pub=out["method"].map(lambda m: METHOD_ALIASES.get(m, m)),
        ratio=out["ratio"].astype(float).round(4),
    )
    return out.reset_index(drop=True)


# the papers' task names (published.csv's notes) -> lm-eval's
PAPER_TASKS = {
    "openbookqa": "openbookqa", "arc-e": "arc_easy", "arc-c": "arc_challenge",
    "winogrande": "winogrande", "hellaswag": "hellaswag", "piqa": "piqa",
    "mathqa": "mathqa", "mmlu": "mmlu",
}  # fmt: skip
_OVER = re.compile(r"zero_shot_avg over ([^()]+)")


def paper_tasks(published: pd.DataFrame) -> dict[str, list[str]]:
    """Each source's zero-shot task list, from a note `zero_shot_avg over A B C` on any of
    its rows, in lm-eval's names (a name it does not know is kept as written)."""
    out: dict[str, list[str]] = {}
    for source, note in published[["source", "note"]].drop_duplicates().itertuples(index=False):
        found = _OVER.search(str(note))
        if found:
            names = found.group(1).split()
            out[str(source)] = [PAPER_TASKS.get(n.lower(), n) for n in names]
    return out


def _same_tasks(merged: pd.DataFrame, tidy: pd.DataFrame, published: pd.DataFrame):
    """A paper's zero-shot mean is compared with ours over the same tasks: the papers
    average six or five tasks (SVD-LLM leaves ARC-c out, AdaSVD puts MMLU in) where our
    `mean` covers the seven we ran. Where we lack one of its tasks, our mean stays and the
    note says the two are not comparable."""
    lists = paper_tasks(published)
    acc = tidy[(tidy["metric"] == "acc") & (tidy["dataset"] != "mean")]
    for i in merged.index[merged["metric"] == ZERO_SHOT]:
        row = merged.loc[i]
        tasks = lists.get(str(row["source"]))
        run = acc[
            (acc["model"] == row["model"])
            & (acc["method"] == row["method"])
            & (acc["ratio"].astype(float).round(4) == row["ratio"])
        ]
        if not tasks:  # the paper's tasks are not recorded (SVD-LLM V2's rows)
            ran = sorted(run["dataset"].unique())
            merged.loc[i, "note"] = (
                f"{row['note']} (not comparable: published.csv does not record this paper's "
                f"tasks; our mean is over {', '.join(ran) or 'our tasks'})".strip()
            )
            continue
        ours = run.set_index("dataset")["value"]
        missing = [t for t in tasks if t not in ours.index]
        if missing:
            merged.loc[i, "note"] = (
                f"{row['note']} (not comparable: our mean is over {', '.join(ours.index) or 'our tasks'}; "
                f"we did not run {', '.join(missing)})".strip()
            )
        else:
            merged.loc[i, "reproduced"] = float(ours[tasks].mean())
            merged.loc[i, "note"] = f"{row['note']} (ours over the same tasks)".strip()
    return merged


def compare(
    tidy: pd.DataFrame, published: pd.DataFrame, model_names: dict[str, str] | None = None
) -> pd.DataFrame:
    """Every (model, method, ratio, metric) that both we and a paper report."""
    model_names = dict(model_names or {})
    ours = ours_long(tidy)
    pub_models = {m.lower(): m for m in published["model"].unique()}
    ours["published_model"] = ours["model"].map(
        lambda k: model_names.get(k, pub_models.get(str(k).lower()))
    )
    ours = ours.dropna(subset=["published_model"])
    merged = ours.merge(
        published.rename(
            columns={"model": "published_model", "method": "method_pub", "value": "published"}
        ),
        on=["published_model", "method_pub", "ratio", "metric"],
        how="inner",
    ).rename(columns={"value": "reproduced"})
    if merged.empty:
        return pd.DataFrame(columns=OUT_COLUMNS)
    merged = _same_tasks(merged, tidy, published)
    merged["diff"] = merged["reproduced"] - merged["published"]
    merged["rel_diff"] = merged["diff"] / merged["published"].abs()
    merged = merged.sort_values(["model", "ratio", "method", "metric", "source"], kind="stable")
    return merged[OUT_COLUMNS].reset_index(drop=True)


def write(
    comparison: pd.DataFrame, stem: str | Path, *, published_path: str | Path = "", n_ours: int = 0
) -> list[Path]:
    """`<stem>.csv` and `<stem>.md`; with no matches, a header-only CSV and a Markdown line
    saying so (and why matches can be absent)."""
    stem = Path(stem)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    write_text(csv_path, comparison.to_csv(index=False, float_format="%.10g"))
    title = "### Published vs reproduced"
    if comparison.empty:
        body = (
            f"No matching rows: none of our {n_ours} (model, method, ratio, metric) results "
            f"matches a published one in {published_path or 'the published table'}. Matches need "
            "the same model (map keys with `--model-names key=Name`), method, ratio and a corpus "
            "among wikitext2/ptb/c4 or the zero-shot mean."
        )
    else:
        show = comparison.copy()
        for col in ("published", "reproduced", "diff"):
            show[col] = show[col].map(lambda v: f"{v:.4g}")
        show["rel_diff"] = show["rel_diff"].map(lambda v: f"{100 * v:+.1f}%")
        show["ratio"] = show["ratio"].map(lambda v: f"{v:.2f}")
        show["comparable"] = show["note"].map(lambda n: "no" if "not comparable" in str(n) else "")
        body = show.drop(columns=["note"]).to_markdown(index=False, disable_numparse=True)
        body += (
            "\n\nzero_shot_avg is a fraction (AdaSVD's percentages divided by 100), ours "
            "taken over each paper's own tasks where we ran them all and the paper names them; "
            "rows marked `no` compare different task sets (the CSV's note column says which)."
        )
    write_text(md_path, f"{title}\n\n{body}\n")
    return [csv_path, md_path]


def parse_model_names(items: list[str] | None) -> dict[str, str]:
    """`["llama-7b=LLaMA-7B", ...] -> {"llama-7b": "LLaMA-7B"}` with a clear error."""
    out = {}
    for item in items or []:
        key, sep, name = item.partition("=")
        if not sep or not key or not name:
            raise PublishedError(f"--model-names expects key=Name, got {item!r}")
        out[key.strip()] = name.strip()
    return out
