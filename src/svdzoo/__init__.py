"""svdzoo: a reproducible workbench for SVD-based compression of LLMs.

The public API is imported lazily so that `import svdzoo` (and every CLI start-up) stays
cheap; see `svdzoo.api` for the functions.
"""

from __future__ import annotations

import os
from typing import Any

# MKL's strict conditional numerical reproducibility: its GEMMs give the same bits on any
# number of threads. Without it MKL splits a long reduction across threads for a narrow
# output (a 64-wide Gram over 1,024 float32 rows on an AVX-512 host), so a cache's bytes
# changed with the job's thread count. Read by MKL at its first call: the CLI sets it
# before any; a program that ran an MKL routine before importing svdzoo sets it itself.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

_API = (
    "calibrate_and_compress",
    "compress",
    "compress_to_dir",
    "load_compressed",
    "load_model",
    "load_statistics",
    "load_tokenizer",
    "save_compressed",
)

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name == "calibrate_and_compress":
        from svdzoo.calibrate_compress import calibrate_and_compress

        return calibrate_and_compress
    if name in _API:
        from svdzoo import api

        return getattr(api, name)
    raise AttributeError(f"module 'svdzoo' has no attribute {name!r}")
