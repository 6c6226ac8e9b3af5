"""Calibration statistics: streamed layer by layer, cached with a manifest, reused by every method.

- `calibrate` / `calibrate_to_dir`: Gram `H = sum x x^T`, per-feature `mean |x|` per input
  group, and each decoder layer's input/output cosine (`gram.py`).
- `calibrate_fisher` / `fisher_to_dir`: FWSVD squared-gradient importances (`fisher.py`).
- `load_stats` / `load_fisher` / `save_stats`: the cache (`cache.py`).
- `SequentialCalibrator`: statistics of the inputs that already-compressed layers produce,
  computed on the fly for error-compensating methods (`sequential.py`).

Cache layout (one directory per product, written atomically, manifest last)::

    DIR/stats.safetensors   gram:   layers.{i}.{group}.gram     float64 (n, n)  sum x x^T
                                    layers.{i}.{group}.absmean  float64 (n,)    mean |x|
                                    layers.{i}.cosine           float64 ()      mean cos(in, out)
                            fisher: {full_target_name}.row      float64 (m,)
                                    {full_target_name}.col      float64 (n,)
    DIR/manifest.json       kind, model, model_fingerprint, family, groups/targets, corpus,
                            corpus_fingerprint, nsamples, seqlen, seed, dtype, batch_size,
                            svdzoo_version, counts (tokens per layers.{i}.{group}), tensors,
                            sha256 and bytes of the tensor file

Groups are the family adapter's shared-input groups (LLaMA: attn_in = q/k/v, attn_out = o,
mlp_in = gate/up, mlp_out = down): one Gram per group, captured at its first member.

CLI: `svdzoo calibrate --model M --corpus C --nsamples N --seqlen L --seed S --out DIR
[--kind gram|fisher] [--device auto] [--dtype float32] [--batch-size B]
[--memory-budget-mb 2048] [--offload-dir D]`. Hidden states between layers stay in host
memory up to the budget and are offloaded per batch to files under `--offload-dir`
(default: a temp dir, removed afterwards) beyond it.
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
