"""After a successful Snakemake run, record its outputs in DVC (`dvc.lock`).

The design is a Snakemake DAG with DVC-tracked outputs: in a DVC project, the Snakefile's
`onsuccess` handler calls `commit_outputs`, so a following `dvc repro` finds every stage
the run produced up to date and `dvc exp run -S ...` recomputes only what the change
touches. It writes the two DVC-only products first (the params check's stamp and the code
stamps, `svdzoo.codehash`), then commits each stage whose dependencies and outputs all
exist and whose outputs are all in the run's DAG with a Snakemake record (`produced`):
Snakemake either made them or checked them against the current params, code and inputs.
An output without a record (made by `dvc repro`, fetched by `dvc pull`) was checked by
mtime only, so a params change goes unseen: it is left to DVC. A stage outside
the DAG is left to `dvc repro`, however complete it looks: its outputs may be from other
parameters (a run of one target checks nothing else), and committing them would record
stale outputs as current. Nor is a stage whose output changed after the Snakemake job that
made it finished (`rewritten_after_snakemake`): `dvc repro` or `dvc exp run -S` rewrote it,
maybe for other params, and Snakemake, which knows nothing of that, takes it as current.
DVC reads only `params.yaml`, so a run on another params file is not committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


# Snakemake records an output's mtime as its job's endtime; a filesystem may round it
TIME_SLACK_S = 1.0


def snakemake_mtime(path: str | Path) -> float:
    """An output's mtime as Snakemake reads it: a directory's `.snakemake_timestamp`, else
    the path's own (not following a link)."""
    path = Path(path)
    stamp = path / ".snakemake_timestamp"
    if path.is_dir() and not path.is_symlink() and stamp.exists():
        return stamp.stat().st_mtime
    return path.lstat().st_mtime


def recorded_endtimes(workflow, paths: Iterable[str]) -> list[tuple[str, float | None]]:
    """`(path, endtime)` of each output from Snakemake's records (None without one), as its
    own `--cleanup-metadata` reads them; all None on a Snakemake without this API."""
    from snakemake.io import IOFile

    out = []
    for path in paths:
        try:
            record = workflow.persistence.metadata(IOFile(path))
        except (AttributeError, KeyError):
            record = None
        out.append((path, getattr(record, "endtime", None)))
    return out


def rewritten_after_snakemake(records: Iterable[tuple[str | Path, float | None]]) -> list[str]:
    """The outputs, of `(path, endtime of the Snakemake job that made it)`, that changed
    after that job finished. An output without a record, or missing, is not listed; one
    that DVC relinked to an identical cached copy only gets older, and is not listed."""
    out = []
    for path, endtime in records:
        if endtime is None or not Path(path).exists():
            continue
        if snakemake_mtime(path) > float(endtime) + TIME_SLACK_S:
            out.append(str(path))
    return out


def commit_outputs(
    params_file: str | Path,
    project: str | Path = ".",
    produced: Iterable[str | Path] | None = None,
    rewritten: Iterable[str | Path] = (),
) -> list[str]:
    """Commit the complete stages of `dvc.yaml` whose outputs are all in `produced` (paths
    relative to `project`: the outputs of the Snakemake run's DAG), plus the DVC-only
    stamps written here; returns their names (empty when this is not a DVC project or the
    run used another params file than DVC's). `produced=None` commits every complete stage:
    only for a caller that knows every output on disk is current. A stage with an output in
    `rewritten` (`rewritten_after_snakemake`) is not committed, and named in a warning."""
    project = Path(project)
    if not (project / ".dvc").is_dir() or not (project / "dvc.yaml").is_file():
        return []
    if Path(params_file).resolve() != (project / "params.yaml").resolve():
        log.info("DVC tracks params.yaml; this run used %s, so nothing is committed", params_file)
        return []
    from svdzoo import cli, codehash, dvc_render
    from svdzoo.errors import ConfigError

    try:
        why = dvc_render.stale(project / "params.yaml", project / "dvc.yaml")
    except ConfigError as exc:  # e.g. a plugin DVC cannot track: Snakemake's run stands
        why = str(exc)
    if why:
        log.warning("dvc: nothing committed: %s (run `svdzoo render-dvc`, then "
                    "`snakemake` again to commit)", why)  # fmt: skip
        return []
    rc = cli.main(["validate-params", str(project / "params.yaml"), "-q",
                   "--stamp", str(project / "data" / "params.valid"),
                   "--dvc-yaml", str(project / "dvc.yaml")])  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"params.yaml did not validate (svdzoo validate-params: rc {rc})")
    codehash.write_stamps(project / "data" / "code", codehash.all_methods())
    from dvc.repo import Repo

    current = None
    if produced is not None:  # the run's DAG, and the stamps just written
        made = [*produced, project / "data" / "params.valid", project / "data" / "code"]
        current = {(project / p).resolve() for p in made}

    changed = {(project / p).resolve() for p in rewritten}

    def committable(stage) -> bool:
        if not all(Path(p.fs_path).exists() for p in [*stage.deps, *stage.outs]):
            return False
        return current is None or all(Path(p.fs_path).resolve() in current for p in stage.outs)

    with Repo(str(project)) as repo:
        stages = list(repo.index.stages)
        rewrote = [s for s in stages if any(Path(p.fs_path).resolve() in changed for p in s.outs)]
        skip = {s.addressing for s in rewrote}
        done = [s.addressing for s in stages if s.addressing not in skip and committable(s)]
        # rewritten by DVC and still current in dvc.lock (a `dvc repro` settled them): fine
        stale = []
        if rewrote:
            with repo.lock:  # `Stage.changed` reads the workspace under DVC's lock
                stale = [s.addressing for s in rewrote if s.changed()]
        if stale:
            log.warning("dvc: %s not committed: %s output changed after Snakemake made it "
                        "(`dvc repro` or `dvc exp run` rewrote it, maybe for other params) "
                        "and Snakemake takes it as current; `dvc repro` settles it, or "
                        "`snakemake --forcerun RULE`", ", ".join(stale),
                        "each one's" if len(stale) > 1 else "its")  # fmt: skip
        if len(done) == len(stages):
            # one commit writes dvc.lock once: for the default run's 144 stages 81 s with
            # every output (12 GB) hashed afresh, against 3.5 min for one commit (and
            # one lock rewrite) per stage
            repo.commit(None, force=True)
        else:
            for stage in stages:
                if stage.addressing in done:
                    repo.commit(stage.addressing, force=True)
                else:
                    log.info("dvc: %s not committed (outside this run's DAG, incomplete, or "
                             "rewritten after Snakemake made it: `dvc repro` checks it)",
                             stage)  # fmt: skip
    log.info("dvc: committed %d stages to dvc.lock", len(done))
    return done
