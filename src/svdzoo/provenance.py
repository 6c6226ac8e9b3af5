"""What an output was made with, beyond svdzoo's own version and code hash: the Python and
library versions whose arithmetic its bits depend on. Two runs of the same code and params
that disagree (a reference model trained on 2026-12-05 and again on 2026-12-06 differed,
with nothing recorded to tell why) can then be told apart by their manifests."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from svdzoo import __version__

# the distributions whose versions can change a result, with the module each installs:
# kernels (torch, scipy's LAPACK), model code and tokenisation (transformers, tokenizers),
# zero-shot scoring (lm-eval)
DISTRIBUTIONS = {
    "torch": "torch",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "scipy": "scipy",
    "numpy": "numpy",
    "lm-eval": "lm_eval",
}


def software() -> dict[str, str]:
    """`{"python": ..., "torch": ..., ...}`, a new dict each call. A module already
    imported answers with its own `__version__` (what actually ran, even from a path that
    shadows the installed package); the others from package metadata, importing nothing.
    A distribution that is not installed is left out; `cuda` is torch's CUDA version when
    torch is imported and built with CUDA; `mkl_cbwr` is MKL's reproducibility mode (set by
    `import svdzoo`), which decides whether its GEMMs' bits follow the thread count;
    `cpu_lapack` is `SVDZOO_CPU_LAPACK` where set (`svdzoo.lapack`): Duo-SVD's split search
    on torch's MKL chose the same splits as on OpenBLAS, but 46 of 487 factor tensors came
    out with other signs."""
    found = {"python": platform.python_version()}
    if os.environ.get("MKL_CBWR"):
        found["mkl_cbwr"] = os.environ["MKL_CBWR"]
    if os.environ.get("SVDZOO_CPU_LAPACK", "").strip():
        found["cpu_lapack"] = os.environ["SVDZOO_CPU_LAPACK"].strip().lower()
    for dist, module in DISTRIBUTIONS.items():
        loaded = getattr(sys.modules.get(module), "__version__", None)
        if isinstance(loaded, str):
            found[dist] = loaded
            continue
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    torch = sys.modules.get("torch")
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    if isinstance(cuda, str):
        found["cuda"] = cuda
    return found


def cpu_threads(device: Any) -> int | None:
    """The CPU thread count an output's LAPACK work ran on, for its manifest (`threads`):
    SVD, eigh and Cholesky give other bits on another count (at round-off; MKL's strict
    mode covers only its GEMMs). None on a GPU (cuSOLVER), where it would only tie the
    manifest to the host's core count."""
    import torch

    return torch.get_num_threads() if torch.device(device).type == "cpu" else None


def made_with() -> dict[str, Any]:
    """What every statistics cache, sensitivity table and compressed model records of its
    making: svdzoo's version and `software()`, always together."""
    return {"svdzoo_version": __version__, "software": software()}
