"""Reporting: tidy metrics, tables (md/tex/csv), figures (png/pdf), published vs ours.

`build_report` is what `svdzoo report` runs; the submodules can be used on their own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from svdzoo.paths import PLOTS, SUMMARY

log = logging.getLogger(__name__)

# What the last report into a folder wrote under its tables/, figures/ and plots/ (paths
# relative to the folder). A rerun removes the recorded files it did not write again (a model
# or method no longer in the results, a comparison not asked for); nothing else is removed.
RECORD = ".svdzoo-report.json"
_FOLDERS = ("tables", "figures", PLOTS)


def _recorded(out_dir: Path) -> list[str]:
    """The files the last report recorded under `out_dir`, and only in its own folders (an
    edited record names nothing else)."""
    try:
        files = json.loads((out_dir / RECORD).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    out = []
    for rel in files if isinstance(files, list) else []:
        parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
        if len(parts) >= 2 and parts[0] in _FOLDERS and ".." not in parts:
            out.append(rel)
    return out


def _remove_stale(out_dir: Path, written: Iterable[Path], folders: Iterable[str]) -> None:
    """Remove the files the previous report wrote in `folders` and this one did not, then
    record this report's files. Only recorded files are removed: a file of the user's beside
    them (notes in tables/, a CSV in plots/) is never touched, whatever its name (any name
    like a table's or a figure's, and any CSV under plots/, used to be deleted)."""
    from svdzoo.io import write_text

    folders = set(folders)
    now = {Path(p).relative_to(out_dir).as_posix() for p in written}
    for rel in _recorded(out_dir):
        old = out_dir / rel
        if rel in now or not old.is_file():
            continue
        if PurePosixPath(rel).parts[0] not in folders:  # not rewritten (no figures): current
            now.add(rel)
            continue
        log.info("removing %s: not part of this report", old)
        old.unlink()
    write_text(out_dir / RECORD, json.dumps({"files": sorted(now)}, indent=1) + "\n")


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
    (tables/, figures/), and the published comparison when `published` is given. Files an
    earlier report recorded in `out_dir/.svdzoo-report.json` and this one does not write
    are removed; no other file in `out_dir` is."""
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
    folders = ["tables", PLOTS, *(["figures"] if figures else [])]
    own = written["tables"] + written["plots"] + written.get("figures", [])
    _remove_stale(out_dir, own, folders)
    log.info(
        "report: %d rows in %s, %d table files, %d figure files",
        len(tidy),
        csv_path,
        len(written["tables"]),
        len(written.get("figures", [])),
    )
    return written
