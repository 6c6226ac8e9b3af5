"""svdzoo: a reproducible workbench for SVD-based compression of LLMs."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
