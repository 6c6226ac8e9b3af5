"""Figures (PNG and PDF) from the tidy metrics and the compressed manifests.

- `ppl_vs_ratio_<model>`: perplexity vs compression ratio, one panel per corpus (log y),
  one line per method, the dense model as a dashed horizontal line.
- `zeroshot_vs_ratio_<model>`: accuracy vs ratio, one panel per task plus the mean.
- `allocation_<model>_<method>`: heatmap of the per-matrix ratio (layer x matrix type),
  one panel per target ratio, for methods whose manifests allocate non-uniformly.
- `efficiency_vs_ratio_<model>`: prefill / decode throughput (largest batch) and peak
  memory vs ratio.
- `compression_time_<model>`: compression time per method, grouped by ratio (bars).

Matplotlib runs on the Agg backend: no display needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from svdzoo.paths import DENSE, ratio_tag
from svdzoo.report.tables import METHOD_ORDER, _method_rank

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, stem: Path) -> list[Path]:
    from svdzoo.io import atomic_path

    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{ext}")
        # a PDF's CreationDate made every report differ from the last, so DVC saw a new
        # output each time; PNGs carry no date
        meta = {"CreationDate": None} if ext == "pdf" else None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
        out.append(path)
    _plt().close(fig)
    return out


def _methods(sub: pd.DataFrame) -> list[str]:
    ms = [m for m in sub["method"].unique() if m != DENSE]
    rank = _method_rank(ms, METHOD_ORDER)
    return sorted(ms, key=rank.__getitem__)


_MARKERS = ("o", "s", "^", "D")
_LINESTYLES = ("-", "--", ":", "-.")


def _style(i: int) -> dict:
    """The i-th method's line: the 10 colours of matplotlib's cycle, then the same colours
    with another marker and dash (the 16-method ablation figure drew asvd and
    duo-svd-allocation alike)."""
    k = (i // 10) % len(_MARKERS)
    return {"color": f"C{i % 10}", "marker": _MARKERS[k], "linestyle": _LINESTYLES[k]}


def _on_ratios(line: pd.DataFrame, ratios: list[float]) -> pd.Series:
    """A method's values on every ratio of the panel, NaN where it has no finite one: the
    line breaks at a missing or diverged run instead of joining its neighbours."""
    vals = line.drop_duplicates("ratio").set_index("ratio")["value"].astype(float)
    vals = vals.where(vals.map(math.isfinite))
    return vals.reindex(ratios)


def _grid(n: int, size: tuple[float, float] = (4.2, 3.2)):
    plt = _plt()
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False
    )
    flat = axes.ravel().tolist()
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _metric_vs_ratio(
    sub: pd.DataFrame, metric: str, datasets: list[str], *, logy: bool, ylabel: str, title: str
):
    fig, axes = _grid(len(datasets))
    methods = _methods(sub)
    for ax, ds in zip(axes, datasets, strict=True):
        d = sub[(sub["metric"] == metric) & (sub["dataset"] == ds)]
        ratios = sorted(d.loc[d["method"] != DENSE, "ratio"].unique())
        diverged = False
        for i, method in enumerate(methods):
            line = d[d["method"] == method].sort_values("ratio")
            if line.empty:
                continue
            vals = _on_ratios(line, ratios)
            (drawn,) = ax.plot(vals.index, vals.to_numpy(), label=method, **_style(i))
            off = line[line["value"] == math.inf]
            if not off.empty:  # diverged: an x at the top edge, not a point left out
                diverged = True
                ax.plot(
                    off["ratio"], [0.96 - 0.04 * i] * len(off),
                    transform=ax.get_xaxis_transform(), marker="x", markersize=8,
                    linestyle="none", color=drawn.get_color(), clip_on=False,
                )  # fmt: skip
        if diverged:
            ax.text(
                0.98, 0.02, "x at the top: diverged", transform=ax.transAxes, fontsize=7,
                ha="right", va="bottom",
            )  # fmt: skip
        dense = d[(d["method"] == DENSE) & d["value"].map(math.isfinite)]["value"]
        if not dense.empty:
            ax.axhline(
                float(dense.iloc[0]), color="black", linestyle="--", linewidth=1, label="dense"
            )
        if logy and (d["value"] > 0).any():
            ax.set_yscale("log")
            _plain_log_ticks(ax, d["value"])
        ax.set_title(ds)
        ax.set_xlabel("compression ratio (fraction of parameters removed)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3, which="both")
    _legend_and_title(fig, axes, title)
    return fig


def _plain_log_ticks(ax, values: pd.Series) -> None:
    """Plain numbers on a log axis. Within about a decade matplotlib labels the minor
    ticks as "6.62 x 10^1", unreadable in print; over several decades only the decades
    are labelled (every minor tick would crowd)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    pos = values[(values > 0) & values.map(math.isfinite)]
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    few = not pos.empty and math.log10(float(pos.max()) / float(pos.min())) < 1.5
    ax.yaxis.set_minor_formatter(plain if few else NullFormatter())


def _legend_and_title(fig, axes, title: str) -> None:
    """Lay the panels out, then stack the shared legend and the title above them (sized
    in inches, so a two-row legend never runs into the panel titles)."""
    fig.tight_layout()
    handles, labels = axes[0].get_legend_handles_labels()
    top = 1.0
    if handles:
        fig.legend(
            handles, labels, loc="lower center", ncol=min(len(labels), 6),
            bbox_to_anchor=(0.5, top),
        )  # fmt: skip
        rows = math.ceil(len(labels) / 6)
        top += (0.25 * rows + 0.15) / fig.get_figheight()
    fig.suptitle(title, y=top + 0.02, va="bottom")


def ppl_vs_ratio(df: pd.DataFrame, model: str, out_dir: Path) -> list[Path]:
    sub = df[df["model"] == model]
    corpora = sorted(sub.loc[sub["metric"] == "perplexity", "dataset"].unique())
    if not corpora:
        return []
    fig = _metric_vs_ratio(
        sub,
        "perplexity",
        corpora,
        logy=True,
        ylabel="perplexity (log)",
        title=f"{model}: perplexity vs ratio",
    )
    return _save(fig, out_dir / f"ppl_vs_ratio_{model}")


def zeroshot_vs_ratio(df: pd.DataFrame, model: str, out_dir: Path) -> list[Path]:
    sub = df[df["model"] == model]
    tasks = sorted(t for t in sub.loc[sub["metric"] == "acc", "dataset"].unique() if t != "mean")
    if not tasks:
        return []
    datasets = tasks + (
        ["mean"] if ((sub["metric"] == "acc") & (sub["dataset"] == "mean")).any() else []
    )
    fig = _metric_vs_ratio(
        sub,
        "acc",
        datasets,
        logy=False,
        ylabel="accuracy",
        title=f"{model}: zero-shot accuracy vs ratio",
    )
    return _save(fig, out_dir / f"zeroshot_vs_ratio_{model}")


# Matrix types in data-flow order (attention in, out; MLP in, out) across families.
TYPE_ORDER = (
    "q_proj", "k_proj", "v_proj", "query_key_value", "o_proj", "out_proj", "dense",
    "gate_proj", "up_proj", "fc1", "dense_h_to_4h", "down_proj", "fc2", "dense_4h_to_h",
)  # fmt: skip


def allocation_matrix(manifest: dict) -> pd.DataFrame:
    """Layer x matrix-type table of per-matrix ratios (dense matrices count as 0)."""
    rows = []
    for name, mod in manifest.get("modules", {}).items():
        layer = mod.get("layer")
        mtype = mod.get("type") or name.rsplit(".", 1)[-1]
        ratio = 0.0 if mod.get("dense") else mod.get("ratio")
        if layer is None or ratio is None:
            continue
        rows.append((int(layer), mtype, float(ratio)))
    if not rows:
        return pd.DataFrame()
    t = pd.DataFrame(rows, columns=["layer", "type", "ratio"])
    mat = t.pivot_table(index="layer", columns="type", values="ratio", aggfunc="mean")
    rank = {name: i for i, name in enumerate(TYPE_ORDER)}
    cols = sorted(mat.columns, key=lambda c: (rank.get(c, len(rank)), c))
    return mat[cols].sort_index()


def _uniform_rank(mod: dict, ratio: float) -> bool:
    """A factored matrix at the papers' uniform rank for `ratio`, give or take the one
    rank `fit_budget` may add or take (a dense matrix is not)."""
    m, n, rank = mod.get("m"), mod.get("n"), mod.get("rank")
    if mod.get("dense") or not all(isinstance(v, int) for v in (m, n, rank)):
        return False
    return abs(rank - math.floor((1.0 - ratio) * m * n / (m + n))) <= 1


def is_allocating(manifest: dict, tol: float = 1e-3) -> bool:
    """True when matrices of one model got different ratios (or some stayed dense). Ranks
    within one of the uniform rank are rounding, not allocation: plain svd-llm's ratios on
    SmolLM2 spread over 0.3958-0.4028 at 40 %, and it got a heatmap of noise."""
    mods = manifest.get("modules") or {}
    target = manifest.get("ratio")
    uniform = mods and isinstance(target, int | float)
    if uniform and all(_uniform_rank(mod, float(target)) for mod in mods.values()):
        return False
    m = allocation_matrix(manifest)
    if m.empty:
        return False
    vals = m.to_numpy().ravel()
    vals = vals[~pd.isna(vals)]
    return len(vals) > 1 and float(vals.max() - vals.min()) > tol


def allocation_heatmaps(
    manifests: dict[tuple[str, str, float], dict], model: str, out_dir: Path
) -> list[Path]:
    written: list[Path] = []
    by_method: dict[str, list[tuple[float, dict]]] = {}
    for (mdl, method, ratio), man in manifests.items():
        if mdl == model and method != DENSE and is_allocating(man):
            by_method.setdefault(method, []).append((ratio, man))
    for method, items in sorted(by_method.items()):
        items.sort(key=lambda x: x[0])
        n_layers = max(len(allocation_matrix(man)) for _, man in items)
        # taller for deep models; a tick every few layers once they would crowd
        fig, axes = _grid(len(items), size=(4.2, max(3.6, 1.6 + 0.13 * n_layers)))
        step = 1 if n_layers <= 12 else math.ceil(n_layers / 8)
        im = None
        for k, (ax, (ratio, man)) in enumerate(zip(axes, items, strict=True)):
            mat = allocation_matrix(man).sort_index()
            im = ax.imshow(
                mat.to_numpy(dtype=float), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0
            )
            ax.set_xticks(range(mat.shape[1]), list(mat.columns), rotation=45, ha="right")
            rows = list(range(0, mat.shape[0], step))
            ax.set_yticks(rows, [str(mat.index[i]) for i in rows])
            if k % 3 == 0:  # the first panel of each row of the grid
                ax.set_ylabel("layer")
            ax.set_title(f"target {ratio_tag(ratio)}")
            if mat.size <= 120:
                for (i, j), v in pd.DataFrame(mat.to_numpy()).stack().items():
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v < 0.6 else "black",
                    )
        if im is not None:
            fig.colorbar(im, ax=axes, label="ratio removed", shrink=0.9)
        fig.suptitle(f"{model} / {method}: per-matrix compression ratio", y=1.04)
        written += _save(fig, out_dir / f"allocation_{model}_{method}")
    return written


def efficiency_vs_ratio(df: pd.DataFrame, model: str, out_dir: Path) -> list[Path]:
    sub = df[df["model"] == model]
    panels: list[tuple[str, str | None, str]] = []
    for metric, label in (
        ("prefill_tokens_per_s", "prefill tokens/s"),
        ("decode_tokens_per_s", "decode tokens/s"),
    ):
        bss = sub.loc[sub["metric"] == metric, "dataset"].unique()
        if len(bss):
            biggest = max(bss, key=lambda b: int(b[2:]))
            panels.append((metric, biggest, f"{label} ({biggest})"))
    if (sub["metric"] == "peak_memory_bytes").any():
        panels.append(("peak_memory_bytes", None, "peak memory (MiB)"))
    if (sub["metric"] == "weight_bytes").any():
        panels.append(("weight_bytes", None, "weights (MiB)"))
    if not panels:
        return []
    fig, axes = _grid(len(panels))
    methods = _methods(sub)
    for ax, (metric, ds, label) in zip(axes, panels, strict=True):
        d = sub[sub["metric"] == metric]
        if ds is not None:
            d = d[d["dataset"] == ds]
        scale = 2**20 if metric.endswith("_bytes") else 1.0
        ratios = sorted(d.loc[d["method"] != DENSE, "ratio"].unique())
        for i, method in enumerate(methods):
            line = d[d["method"] == method].sort_values("ratio")
            if not line.empty:
                vals = _on_ratios(line, ratios) / scale
                ax.plot(vals.index, vals.to_numpy(), label=method, **_style(i))
        dense = d[d["method"] == DENSE]["value"]
        if not dense.empty:
            ax.axhline(
                float(dense.iloc[0]) / scale,
                color="black",
                linestyle="--",
                linewidth=1,
                label="dense",
            )
        ax.set_title(label)
        ax.set_xlabel("compression ratio")
        ax.grid(True, alpha=0.3)
    _legend_and_title(fig, axes, f"{model}: throughput and memory vs ratio")
    return _save(fig, out_dir / f"efficiency_vs_ratio_{model}")


def compression_time(df: pd.DataFrame, model: str, out_dir: Path) -> list[Path]:
    sub = df[
        (df["model"] == model) & (df["metric"] == "compression_time_s") & (df["method"] != DENSE)
    ]
    if sub.empty:
        return []
    plt = _plt()
    methods = _methods(sub)
    ratios = sorted(sub["ratio"].unique())
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(methods) + 2), 3.6))
    width = 0.8 / max(1, len(ratios))
    for j, ratio in enumerate(ratios):
        vals = [sub[(sub["method"] == m) & (sub["ratio"] == ratio)]["value"] for m in methods]
        # a missing run is no bar (it was a bar of height 0: a compression that took no time)
        heights = [float(v.iloc[0]) if not v.empty else math.nan for v in vals]
        xs = [i + (j - (len(ratios) - 1) / 2) * width for i in range(len(methods))]
        ax.bar(xs, heights, width=width, label=ratio_tag(ratio))
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
    ax.set_ylabel("compression time (s)")
    ax.set_title(f"{model}: compression time per method")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="ratio", fontsize=8)
    fig.tight_layout()
    return _save(fig, out_dir / f"compression_time_{model}")


def write_all(
    df: pd.DataFrame,
    manifests: dict[tuple[str, str, float], dict],
    out_dir: str | Path,
    *,
    models: Sequence[str] | None = None,
) -> list[Path]:
    out_dir = Path(out_dir)
    written: list[Path] = []
    for model in models or sorted(df["model"].unique()):
        written += ppl_vs_ratio(df, model, out_dir)
        written += zeroshot_vs_ratio(df, model, out_dir)
        written += allocation_heatmaps(manifests, model, out_dir)
        written += efficiency_vs_ratio(df, model, out_dir)
        written += compression_time(df, model, out_dir)
    return written
