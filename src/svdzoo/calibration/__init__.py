"""Calibration statistics: streamed layer by layer, cached with a manifest, reused by every method.

- `calibrate` / `calibrate_to_dir`: Gram `H = sum x x^T`, per-feature `mean |x|` per input
  group, and each decoder layer's input/output cosine (`gram.py`).
- `calibrate_fisher` / `fisher_to_dir`: FWSVD squared-gradient importances (`fisher.py`).
- `load_stats` / `load_fisher` / `save_stats`: the cache (`cache.py`).
- `SequentialCalibrator`: statistics of the inputs that already-compressed layers produce,
  computed on the fly for error-compensating methods (`sequential.py`).
"""

from __future__ import annotations

from svdzoo.calibration.cache import (
    expected,
    load_fisher,
    load_stats,
    read_manifest,
    save_stats,
)
from svdzoo.calibration.fisher import calibrate_fisher, fisher_information, fisher_to_dir
from svdzoo.calibration.gram import calibrate, calibrate_to_dir, stream_gram_stats
from svdzoo.calibration.sequential import GroupStats, SequentialCalibrator
from svdzoo.calibration.stats import CalibrationStats, FisherStats, TargetStats

__all__ = [
    "CalibrationStats",
    "FisherStats",
    "GroupStats",
    "SequentialCalibrator",
    "TargetStats",
    "calibrate",
    "calibrate_fisher",
    "calibrate_to_dir",
    "expected",
    "fisher_information",
    "fisher_to_dir",
    "load_fisher",
    "load_stats",
    "read_manifest",
    "save_stats",
    "stream_gram_stats",
]
