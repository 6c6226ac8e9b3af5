"""What an output was made with, beyond svdzoo's own version and code hash: the Python and
library versions whose arithmetic its bits depend on. Two runs of the same code and params
that disagree (a reference model trained on 2026-12-05 and again on 2026-12-06 differed,
with nothing recorded to tell why) can then be told apart by their manifests."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

# the distributions whose versions can change a result: kernels (torch, scipy's LAPACK),
# model code and tokenisation (transformers, tokenizers), zero-shot scoring (lm-eval)
DISTRIBUTIONS = ("torch", "transformers", "tokenizers", "scipy", "numpy", "lm-eval")


@functools.cache
def software() -> dict[str, str]:
    """`{"python": ..., "torch": ..., ...}`: the installed versions, read from package
    metadata (importing nothing); a distribution that is not installed is left out."""
    found = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
