"""The one path scheme shared by the CLI, the Snakemake rules and the DVC stages."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

DENSE = "dense"
MANIFEST = "manifest.json"  # of a compressed model directory
WEIGHTS = "svdzoo-lowrank.safetensors"  # the factors of a compressed model directory
SUMMARY = "summary.json"  # the report's headline metrics (DVC metrics)
PLOTS = "plots"  # the report's plot data (DVC plots)


def ratio_tag(ratio: float) -> str:
    """`0.4 -> 'r0.40'`; the dense model is `r0.00`."""
    return f"r{ratio:.2f}"


def calib_tag(corpus: str, nsamples: int, seqlen: int, seed: int) -> str:
    """`pydoc-n32-l256-s3`: one path component. A corpus given as a path with directories is
    named by its file's stem and a hash of the path as given (`corpus-1a2b3c4d-n32-...`):
    spliced in whole, an absolute path would put every model's statistics at the same
    place outside `data/`."""
    name = str(corpus)
    if "/" in name or "\\" in name:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
        name = f"{Path(name).stem or 'corpus'}-{digest}"
    return f"{name}-n{nsamples}-l{seqlen}-s{seed}"


@dataclass(frozen=True)
class Layout:
    """Every artefact's location, relative to a project root."""

    root: Path = Path(".")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def model_dir(self, model: str) -> Path:
        """A model the workflow trains or fetches itself (`svdzoo prepare-model`)."""
        return self.data / "models" / model

    reference_model = model_dir  # the older name

    def stats(self, model: str, calib: str) -> Path:
        return self.data / "stats" / model / calib

    def gram(self, model: str, calib: str) -> Path:
        return self.stats(model, calib) / "gram"

    def fisher(self, model: str, calib: str) -> Path:
        return self.stats(model, calib) / "fisher"

    def sensitivity(self, model: str, calib: str, kind: str) -> Path:
        return self.stats(model, calib) / f"sensitivity-{kind}"

    def tasks(self) -> Path:
        return self.data / "tasks"

    def compressed(self, model: str, method: str, ratio: float) -> Path:
        return self.results / "compressed" / model / method / ratio_tag(ratio)

    def compressed_manifest(self, model: str, method: str, ratio: float) -> Path:
        return self.compressed(model, method, ratio) / MANIFEST

    def metrics_dir(self, model: str, method: str, ratio: float) -> Path:
        return self.results / "metrics" / model / method / ratio_tag(ratio)

    def ppl(self, model: str, method: str, ratio: float) -> Path:
        return self.metrics_dir(model, method, ratio) / "ppl.json"

    def zeroshot(self, model: str, method: str, ratio: float) -> Path:
        return self.metrics_dir(model, method, ratio) / "zeroshot.json"

    def efficiency(self, model: str, method: str, ratio: float) -> Path:
        return self.metrics_dir(model, method, ratio) / "efficiency.json"

    @property
    def metrics_csv(self) -> Path:
        return self.results / "metrics.csv"

    @property
    def tables(self) -> Path:
        return self.results / "tables"

    @property
    def figures(self) -> Path:
        return self.results / "figures"

    @property
    def summary(self) -> Path:
        return self.results / SUMMARY

    @property
    def plots(self) -> Path:
        return self.results / PLOTS
