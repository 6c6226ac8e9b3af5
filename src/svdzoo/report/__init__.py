"""Reporting: tidy metrics, tables (md/tex/csv), figures (png/pdf), published vs ours.

`build_report` is what `svdzoo report` runs; the submodules can be used on their own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from svdzoo.errors import OutputError
from svdzoo.io import staging_dir
from svdzoo.paths import PLOTS, SUMMARY

log = logging.getLogger(__name__)

# What the last report into a folder wrote (paths relative to the folder). A rerun removes
# the recorded files under tables/, figures/ and plots/ it did not write again (a model or
# method no longer in the results, a comparison not asked for); nothing else is removed.
RECORD = ".svdzoo-report.json"
_FOLDERS = ("tables", "figures", PLOTS)
METRICS_CSV = "metrics.csv"
_TOP = (METRICS_CSV, SUMMARY)  # always written, so a folder with a record holds ours
STAGING = "svdzoo-report"  # the report is written to `.svdzoo-report.<pid>.<random>.tmp` first


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


# folders of the results tree that the report reads or that the runs write
_RESULT_INPUTS = ("metrics", "compressed", "logs", "benchmarks")
_METRIC_FILES = ("ppl.json", "zeroshot.json", "efficiency.json")


def _refuse_inputs_and_outputs(out_dir: Path, results_dir: Path) -> None:
    """`--out` inside the tree the report reads, or in a model, a cache or a run's metric
    folder, is refused even with --force: the report's files went in beside a compressed
    model's manifest (a later `compress --out` there was then refused, an upload of it
    carried them) or into `results/metrics` itself, all DVC outputs."""
    from svdzoo.io import recognise

    out, res = out_dir.resolve(), results_dir.resolve()
    if out != res:
        for sub in _RESULT_INPUTS:
            if out.is_relative_to(res / sub):
                raise OutputError(
                    f"--out {out_dir} is inside {res / sub}, which the runs write and the "
                    "report reads; give the report a folder of its own"
                )
    kind = recognise(out_dir)
    if kind is not None:
        raise OutputError(f"--out {out_dir} is an svdzoo {kind} output; give the report a "
                          "folder of its own")  # fmt: skip
    held = [f for f in ("config.json", *_METRIC_FILES) if (out_dir / f).is_file()]
    if held:
        raise OutputError(
            f"--out {out_dir} holds {', '.join(held)} (a model or a run's metrics); give the "
            "report a folder of its own"
        )


def _refuse_replacing(out_dir: Path, results_dir: Path, planned: list[str], force: bool) -> None:
    """`--out` into a folder of the user's replaced any file that happened to share a
    report file's name (their metrics.csv, tables/table1_x.csv). A file may be replaced only
    if an earlier report recorded it, or `out_dir` is the results tree itself (svdzoo's own:
    what both workflow engines write, with plot data and summary.json in git and reports from
    before the record), or `force`. A directory in a file's place, or a file in a folder's,
    is refused even with `force`."""
    for rel in planned:
        if (out_dir / rel).is_dir():
            raise OutputError(
                f"refusing to write the report into {out_dir}: {rel} is a directory there "
                "(--force does not change this); choose another --out"
            )
        for parent in PurePosixPath(rel).parents:
            if (
                parent.parts
                and os.path.lexists(out_dir / parent)
                and not (out_dir / parent).is_dir()
            ):
                raise OutputError(
                    f"refusing to write the report into {out_dir}: {parent} is a file there, "
                    f"where the report needs a folder for {rel}; choose another --out"
                )
    if force or out_dir.resolve() == results_dir.resolve():
        return
    ours = set(_recorded(out_dir)) | (set(_TOP) if (out_dir / RECORD).is_file() else set())
    foreign = [rel for rel in planned if rel not in ours and os.path.lexists(out_dir / rel)]
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise OutputError(
            f"refusing to write the report into {out_dir}: it would replace "
            f"{len(foreign)} file(s) its {RECORD} does not list as a report's "
            f"({', '.join(foreign[:5])}{more}): yours, or from a report older than the "
            "record; choose another --out, or pass --force to replace them"
        )


def _move_into(stage: Path, out_dir: Path, rels: Iterable[str]) -> None:
    """Each staged file renamed onto its place (one `rename` each: a reader sees the old
    file or the new one, never half of one). Across file systems (a `tables/` that is a
    link to another disk) it is copied beside its place first, then renamed."""
    for rel in rels:
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(stage / rel, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            beside = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                shutil.copyfile(stage / rel, beside)
                os.replace(beside, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    beside.unlink()


def _record(out_dir: Path, rels: Iterable[str]) -> None:
    from svdzoo.io import write_text

    write_text(out_dir / RECORD, json.dumps({"files": sorted(set(rels))}, indent=1) + "\n")


def _remove_stale(out_dir: Path, written: Iterable[Path], folders: Iterable[str]) -> None:
    """Remove the files the previous report wrote in `folders` and this one did not, then
    record this report's files. Only recorded files are removed: a file of the user's beside
    them (notes in tables/, a CSV in plots/) is never touched, whatever its name (any name
    like a table's or a figure's, and any CSV under plots/, used to be deleted)."""
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
    _record(out_dir, now)


def build_report(
    results_dir: str | Path,
    out_dir: str | Path,
    *,
    published: str | Path | None = None,
    model_names: dict[str, str] | None = None,
    expected: Iterable[str | Path] | None = None,
    require_complete: bool = False,
    figures: bool = True,
    force: bool = False,
) -> dict[str, list[Path]]:
    """Collect metrics under `results_dir`, write metrics.csv, summary.json (headline
    metrics), plots/ (their data per model and metric), tables and figures under `out_dir`
    (tables/, figures/), and the published comparison when `published` is given.

    Everything is written to a temporary folder first and moved into `out_dir` only when
    complete, and only if it replaces no file but an earlier report's (`force` replaces any
    file): see `_refuse_replacing`. Files an earlier report recorded in
    `out_dir/.svdzoo-report.json` and this one does not write are removed; no other file in
    `out_dir` is."""
    from svdzoo.report import metrics

    out_dir, results_dir = Path(out_dir), Path(results_dir)
    tidy = metrics.collect(results_dir, expected=expected, require_complete=require_complete)
    ref = None
    if published is not None:  # a missing or malformed CSV fails before anything is written
        from svdzoo.report import published as pub

        ref = pub.load_published(published)
    manifests = metrics.load_manifests(results_dir) if figures else None
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file; the report needs a directory")
    _refuse_inputs_and_outputs(out_dir, results_dir)
    # staging_dir creates out_dir; one report into a folder at a time; a killed one's
    # staging folder goes with the next
    with staging_dir(out_dir / STAGING) as stage:
        staged = _write(tidy, ref, manifests, stage, published, model_names)
        rels = {k: [p.relative_to(stage).as_posix() for p in v] for k, v in staged.items()}
        planned = [rel for v in rels.values() for rel in v]
        _refuse_replacing(out_dir, results_dir, planned, force)
        # recorded before the first file moves: a report stopped midway leaves only files
        # the record names, which the next one replaces (and removes if stale)
        _record(out_dir, [*_recorded(out_dir), *planned])
        _move_into(stage, out_dir, planned)
        written = {k: [out_dir / rel for rel in v] for k, v in rels.items()}
        folders = ["tables", PLOTS, *(["figures"] if figures else [])]
        _remove_stale(out_dir, [p for v in written.values() for p in v], folders)
    csv_path = out_dir / METRICS_CSV
    log.info(
        "report: %d rows in %s, %d table files, %d figure files",
        len(tidy),
        csv_path,
        len(written["tables"]),
        len(written.get("figures", [])),
    )
    return written


def _write(tidy, ref, manifests, out_dir: Path, published, model_names) -> dict[str, list[Path]]:
    """Every report file under `out_dir` (the staging folder), by kind."""
    from svdzoo.report import metrics, summary, tables

    written: dict[str, list[Path]] = {}
    csv_path = out_dir / METRICS_CSV
    metrics.write_tidy(tidy, csv_path)
    written["metrics"] = [csv_path, summary.write_summary(tidy, out_dir / SUMMARY)]
    written["plots"] = summary.write_plot_data(tidy, out_dir)
    written["tables"] = tables.write_all(tidy, out_dir / "tables")
    if ref is not None:
        from svdzoo.report import published as pub

        comp = pub.compare(tidy, ref, model_names)
        written["tables"] += pub.write(
            comp,
            out_dir / "tables" / "published_vs_reproduced",
            published_path=published,
            n_ours=len(pub.ours_long(tidy)),
        )
        log.info("published vs reproduced: %d matching row(s)", len(comp))
    if manifests is not None:
        from svdzoo.report import figures as figs

        written["figures"] = figs.write_all(tidy, manifests, out_dir / "figures")
    return written
