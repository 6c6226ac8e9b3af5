"""svdzoo: a reproducible workbench for SVD-based compression of LLMs.

The public API is imported lazily so that `import svdzoo` (and every CLI start-up) stays
cheap; see `svdzoo.api` for the functions.
"""

from __future__ import annotations

from typing import Any

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
