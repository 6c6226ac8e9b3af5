"""Paper-style tables from the tidy metrics: Markdown, LaTeX and CSV.

`table1` follows Table 1 of SVD-LLM: one row per method x ratio of a model (the dense
model first), perplexity per corpus, zero-shot accuracy per task and their mean. Within
each ratio the best compressed value of each column is bold (lowest perplexity, highest
accuracy); the dense row is a reference and never competes. CSV files hold the raw
numbers, Markdown and LaTeX the formatted ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from svdzoo.io import write_text
from svdzoo.paths import DENSE

METHOD_ORDER = (
    "dense",
    "svd",
    "fwsvd",
    "asvd",
    "svd-llm",
    "svd-llm-v2",
    "adasvd",
    "ressvd",
    "duo-svd",
    "duo-svd-independent",
)
PPL = "ppl"
ACC = "acc"


def _method_rank(methods: Sequence[str], order: Sequence[str]) -> dict[str, int]:
    known = {m: i for i, m in enumerate(order)}
    extra = sorted(m for m in methods if m not in known)
    return {**known, **{m: len(order) + i for i, m in enumerate(extra)}}


def _order_rows(table: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    rank = _method_rank(table["method"].unique(), order)
    key = table["method"].map(rank)
    dense_first = (table["method"] != DENSE).astype(int)
    return (
        table.assign(_d=dense_first, _k=key)
        .sort_values(["_d", "ratio", "_k"], kind="stable")
        .drop(columns=["_d", "_k"])
        .reset_index(drop=True)
    )


def table1(
    df: pd.DataFrame, model: str, *, method_order: Sequence[str] = METHOD_ORDER
) -> pd.DataFrame:
    """Wide numeric table for `model`: method, ratio, `ppl:<corpus>`..., `acc:<task>`...,
    `acc:mean`. Columns appear only for metrics present in `df`."""
    sub = df[df["model"] == model]
    if sub.empty:
        raise ValueError(f"no metrics for model {model!r}")
    cols: dict[str, pd.Series] = {}
    ppl = sub[sub["metric"] == "perplexity"]
    for corpus in sorted(ppl["dataset"].unique()):
        cols[f"{PPL}:{corpus}"] = ppl[ppl["dataset"] == corpus].set_index(["method", "ratio"])[
            "value"
        ]
    acc = sub[sub["metric"] == "acc"]
    for task in sorted(t for t in acc["dataset"].unique() if t != "mean"):
        cols[f"{ACC}:{task}"] = acc[acc["dataset"] == task].set_index(["method", "ratio"])["value"]
    mean = acc[acc["dataset"] == "mean"]
    if not mean.empty:
        cols[f"{ACC}:mean"] = mean.set_index(["method", "ratio"])["value"]
    runs = sub[["method", "ratio"]].drop_duplicates().set_index(["method", "ratio"])
    wide = runs.join(pd.DataFrame(cols)) if cols else runs
    return _order_rows(wide.reset_index(), method_order)


def higher_is_better(column: str) -> bool | None:
    """Direction of a metric column; None for columns that are not compared."""
    if column.startswith(f"{PPL}:"):
        return False
    if column.startswith(f"{ACC}:"):
        return True
    return None


def best_mask(table: pd.DataFrame) -> pd.DataFrame:
    """True where a value is the best of its column among compressed rows of its ratio
    (ties all bold; groups with a single candidate get no bold). Only finite values
    compete: a diverged (infinite) perplexity is never the best of its ratio."""
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    compressed = table["method"] != DENSE
    for col in table.columns:
        hib = higher_is_better(col)
        if hib is None:
            continue
        for _ratio, idx in table[compressed].groupby("ratio").groups.items():
            vals = table.loc[idx, col].astype(float)
            vals = vals[vals.map(math.isfinite)]
            if len(vals) < 2:
                continue
            best = vals.max() if hib else vals.min()
            mask.loc[vals.index[vals == best], col] = True
    return mask


def format_number(value: float, column: str) -> str:
    """Perplexity with two decimals (thousands separated when huge), accuracy with three,
    ratios with two, anything else (sizes, speeds, times) with four significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    v = float(value)
    if math.isinf(v):
        return "diverged"
    if column.startswith(f"{ACC}:"):
        return f"{v:.3f}"
    if column == "ratio" or "ratio" in column:
        return f"{v:.2f}"
    if column.startswith(f"{PPL}:"):
        if abs(v) >= 1e7:
            return f"{v:.3g}"
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.2f}"
    return f"{v:.4g}"


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
}


def tex_escape(s: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(s))


def header(column: str, style: str) -> str:
    """`ppl:wikitext2 -> 'wikitext2 ppl ↓'` (Markdown) / `wikitext2 ppl $\\downarrow$`."""
    if ":" not in column:
        return column if style == "md" else tex_escape(column)
    kind, name = column.split(":", 1)
    arrow = {"md": {PPL: "↓", ACC: "↑"}, "tex": {PPL: r"$\downarrow$", ACC: r"$\uparrow$"}}[
        style
    ].get(kind, "")
    label = f"{name} {kind}"
    return f"{label if style == 'md' else tex_escape(label)} {arrow}".strip()


def formatted(table: pd.DataFrame, mask: pd.DataFrame | None, style: str) -> pd.DataFrame:
    """Strings for Markdown (`**x**`) or LaTeX (`\\textbf{x}`), headers included."""
    out = pd.DataFrame(index=table.index)
    for col in table.columns:
        cells = []
        for i, v in table[col].items():
            if col == "method":
                s = str(v) if style == "md" else tex_escape(v)
            elif isinstance(v, str):
                s = v if style == "md" else tex_escape(v)
            else:
                s = format_number(v, col)
            if mask is not None and bool(mask.at[i, col]):
                s = f"**{s}**" if style == "md" else rf"\textbf{{{s}}}"
            cells.append(s)
        out[header(col, style)] = cells
    return out


def write_table(
    table: pd.DataFrame,
    stem: str | Path,
    *,
    mask: pd.DataFrame | None = None,
    title: str = "",
    note: str = "",
) -> list[Path]:
    """Write `<stem>.csv` (raw), `<stem>.md` and `<stem>.tex` (formatted, bold best)."""
    stem = Path(stem)
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    write_text(paths[0], table.to_csv(index=False, float_format="%.10g"))
    md = formatted(table, mask, "md").to_markdown(index=False, disable_numparse=True)
    parts = ([f"### {title}", ""] if title else []) + [md] + (["", note] if note else [])
    write_text(paths[1], "\n".join(parts) + "\n")
    tex_df = formatted(table, mask, "tex")
    align = "".join("l" if c in ("method", "model") else "r" for c in table.columns)
    tex = tex_df.to_latex(index=False, escape=False, column_format=align)
    if title:
        tex = f"% {title}\n" + tex
    write_text(paths[2], tex)
    return paths


def summary(
    df: pd.DataFrame, model: str, *, method_order: Sequence[str] = METHOD_ORDER
) -> pd.DataFrame:
    """Per-model overview: quality in one number per corpus plus size, memory, speed, time."""
    sub = df[df["model"] == model]
    if sub.empty:
        raise ValueError(f"no metrics for model {model!r}")
    runs = sub[["method", "ratio"]].drop_duplicates().set_index(["method", "ratio"])

    def pick(metric: str, dataset: str | None = None, scale: float = 1.0) -> pd.Series:
        s = sub[sub["metric"] == metric]
        if dataset is not None:
            s = s[s["dataset"] == dataset]
        return s.set_index(["method", "ratio"])["value"] / scale

    cols: dict[str, pd.Series] = {}
    for corpus in sorted(sub.loc[sub["metric"] == "perplexity", "dataset"].unique()):
        cols[f"{PPL}:{corpus}"] = pick("perplexity", corpus)
    if ((sub["metric"] == "acc") & (sub["dataset"] == "mean")).any():
        cols[f"{ACC}:mean"] = pick("acc", "mean")
    for metric, name, scale in (
        ("model_achieved_ratio", "achieved ratio (model)", 1.0),
        ("achieved_ratio", "achieved ratio (targets)", 1.0),
        ("params_total", "params (M)", 1e6),
        ("weight_bytes", "weights (MiB)", 2**20),
        ("peak_memory_bytes", "peak memory (MiB)", 2**20),
        ("compression_time_s", "compression time (s)", 1.0),
    ):
        if (sub["metric"] == metric).any():
            cols[name] = pick(metric, scale=scale)
    for metric, label in (
        ("prefill_tokens_per_s", "prefill tok/s"),
        ("decode_tokens_per_s", "decode tok/s"),
    ):
        bss = sub.loc[sub["metric"] == metric, "dataset"].unique()
        if len(bss):
            biggest = max(bss, key=lambda b: int(b[2:]))
            cols[f"{label} ({biggest})"] = pick(metric, biggest)
    wide = runs.join(pd.DataFrame(cols)) if cols else runs
    return _order_rows(wide.reset_index(), method_order)


def write_all(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Table 1 and the summary for every model in `df`, under `out_dir`."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    for model in sorted(df["model"].unique()):
        t1 = table1(df, model)
        written += write_table(
            t1,
            out_dir / f"table1_{model}",
            mask=best_mask(t1),
            title=f"{model}: perplexity and zero-shot accuracy",
            note="Bold: best compressed value per ratio (lower perplexity, higher accuracy is better).",
        )
        written += write_table(
            summary(df, model), out_dir / f"summary_{model}", title=f"{model}: summary"
        )
    return written
