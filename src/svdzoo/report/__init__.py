"""Reporting: tidy metrics, tables (md/tex/csv), figures (png/pdf), published vs ours.

`build_report` is what `svdzoo report` runs; the submodules can be used on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from svdzoo.paths import SUMMARY

log = logging.getLogger(__name__)

# The files the report writes under tables/ and figures/: one it did not write this time
# (a model or method no longer in the results, a comparison not asked for) is stale.
_OWN = {
    "tables": ("table1_*", "summary_*", "published_vs_reproduced.*"),
    "figures": (
        "ppl_vs_ratio_*",
        "zeroshot_vs_ratio_*",
        "allocation_*",
        "efficiency_vs_ratio_*",
        "compression_time_*",
    ),
}


def _remove_stale(folder: Path, written: Iterable[Path], patterns: Iterable[str]) -> None:
    keep = {Path(p).resolve() for p in written}
    for pattern in patterns:
        for old in sorted(folder.glob(pattern)):
            if old.is_file() and old.resolve() not in keep:
                log.info("removing %s: not part of this report", old)
                old.unlink()


def build_report(
    results_dir: str | Path,
    out_dir: str | Path,
    *,
    published: str | Path | None = None,
    model_names: dict[str, str] | None = None,
    expected: Iterable[str | Path] | None = None,
    require_complete: bool = False,
    figures: bool = True,
) -> dict[str, list[Path]]:
    """Collect metrics under `results_dir`, write metrics.csv, summary.json (headline
    metrics), plots/ (their data per model and metric), tables and figures under `out_dir`
    (tables/, figures/), and the published comparison when `published` is given."""
    from svdzoo.report import metrics, summary, tables

    out_dir = Path(out_dir)
    tidy = metrics.collect(results_dir, expected=expected, require_complete=require_complete)
    ref = None
    if published is not None:  # a missing or malformed CSV fails before anything is written
        from svdzoo.report import published as pub

        ref = pub.load_published(published)
    written: dict[str, list[Path]] = {}
    csv_path = out_dir / "metrics.csv"
    metrics.write_tidy(tidy, csv_path)
    written["metrics"] = [csv_path, summary.write_summary(tidy, out_dir / SUMMARY)]
    written["plots"] = summary.write_plot_data(tidy, out_dir)
    written["tables"] = tables.write_all(tidy, out_dir / "tables")
    if ref is not None:
        comp = pub.compare(tidy, ref, model_names)
        n_ours = len(pub.ours_long(tidy))
        written["tables"] += pub.write(
            comp,
            out_dir / "tables" / "published_vs_reproduced",
            published_path=published,
            n_ours=n_ours,
        )
        log.info("published vs reproduced: %d matching row(s)", len(comp))
    if figures:
        from svdzoo.report import figures as figs

        manifests = metrics.load_manifests(results_dir)
        written["figures"] = figs.write_all(tidy, manifests, out_dir / "figures")
        _remove_stale(out_dir / "figures", written["figures"], _OWN["figures"])
    _remove_stale(out_dir / "tables", written["tables"], _OWN["tables"])
    log.info(
        "report: %d rows in %s, %d table files, %d figure files",
        len(tidy),
        csv_path,
        len(written["tables"]),
        len(written.get("figures", [])),
    )
    return written
