"""torch, imported when a computation first needs it, so that checking a config does not.

Every Snakemake parse, `svdzoo validate-params`, `render-dvc` and the report check the
method names and options against the method registry, and the registry's modules compute
with torch. Importing torch takes ~3 s per process, as long as the rest of a Snakemake
parse. The modules that a params check imports (`svdzoo.config`: the registry, `linalg`,
`allocation`, `column_split`, `lapack`, `models`, `data`) take `torch` and `nn` from here;
modules that subclass `nn.Module` or compute at import import torch itself.
`tests/test_config.py` checks that validating params.yaml leaves torch unimported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["LazyModule", "nn", "torch"]


class LazyModule:
    """Module `name`, imported on the first attribute read.

    Each attribute read is then kept on the proxy, so a hot loop's `torch.matmul` costs a
    plain attribute lookup after the first. A test that patches a torch function must
    therefore patch it where the code reads it: on a submodule (`torch.linalg`), or on the
    module that holds the proxy."""

    def __init__(self, name: str) -> None:
        self._lazy_name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)  # copy, pickle and inspect probe these: no import
        value = getattr(importlib.import_module(self._lazy_name), attr)
        setattr(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<lazily imported module {self._lazy_name!r}>"


if TYPE_CHECKING:
    import torch
    from torch import nn
else:
    torch = LazyModule("torch")
    nn = LazyModule("torch.nn")
