"""Symmetric eigenvalues on a CPU through scipy's LAPACK (OpenBLAS) rather than torch's (MKL).

Duo-SVD's split search is made of eigenvalue-only solves (`T`'s spectrum per candidate).
On the AMD EPYC hosts this project runs on, torch's MKL `?syevd` takes 1.5-1.6 x the time
of the OpenBLAS one that scipy ships (r = 576: 12.2 against 7.8 ms in float32, 20.9
against 13.6 ms in float64; r = 1024: 59.8 against 36.9 and 103.8 against 64.4 ms; one
thread; docs/results.md, "Compression speed"): MKL's tridiagonalisation runs its BLAS-2
half slowly on non-Intel CPUs. GEMMs are as fast in both, so only these solves move.

`SVDZOO_CPU_LAPACK=torch` goes back to `torch.linalg.eigvalsh` (also what a GPU tensor, a
dtype other than float32/float64, or a host without scipy gets). The eigenvalues agree to
LAPACK's backward error either way; the split search certifies its decisions against
that error (`column_split.kernels._f32_error`), so its splits do not depend on the choice.
OpenBLAS runs on as many threads as torch does (`threadpoolctl`), so `torch.set_num_threads`
and `OMP_NUM_THREADS` govern both.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from svdzoo.errors import ConfigError

Tensor = torch.Tensor
ENV = "SVDZOO_CPU_LAPACK"
BACKENDS = ("scipy", "torch")


def backend() -> str:
    """The CPU backend: `SVDZOO_CPU_LAPACK` (`scipy`, the default, or `torch`); `torch` when
    scipy cannot be imported."""
    choice = os.environ.get(ENV, "scipy").strip().lower() or "scipy"
    if choice not in BACKENDS:
        raise ConfigError(f"{ENV}={choice!r}: choose one of {BACKENDS}")
    if choice == "scipy" and _scipy() is None:
        return "torch"
    return choice


@functools.cache
def _scipy() -> tuple[Any, Any] | None:
    """`(scipy.linalg.lapack, a threadpoolctl controller)`, or None when either is missing."""
    try:
        from scipy.linalg import lapack
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return lapack, ThreadpoolController()  # after scipy's import, so it sees its OpenBLAS


@functools.cache
def _workspace(kind: str, n: int) -> tuple[int, int]:
    lapack, _ = _scipy()  # type: ignore[misc]
    query = lapack.ssyevd_lwork if kind == "s" else lapack.dsyevd_lwork
    lwork, liwork = query(n, compute_v=0, lower=0)[:2]
    return int(lwork), int(liwork)


def eigvalsh(T: Tensor, *, overwrite: bool = False) -> Tensor:
    """The eigenvalues of the symmetric `T` (its lower triangle, as `torch.linalg.eigvalsh`
    reads), ascending, in `T`'s dtype and device. `overwrite`: `T` is scratch the solve may
    destroy (saves a copy on the scipy path); the values are then NaN if LAPACK does not
    converge, which torch's solver reports as an error otherwise."""
    kind = {torch.float32: "s", torch.float64: "d"}.get(T.dtype)
    n = T.shape[-1]
    if T.device.type != "cpu" or T.ndim != 2 or kind is None or n == 0 or backend() != "scipy":
        return torch.linalg.eigvalsh(T)
    lapack, controller = _scipy()  # type: ignore[misc]
    solve = lapack.ssyevd if kind == "s" else lapack.dsyevd
    lwork, liwork = _workspace(kind, n)
    scratch = overwrite and T.is_contiguous()
    work = T if scratch else T.clone(memory_format=torch.contiguous_format)
    # `work^T` is Fortran-ordered over `work`'s memory; its upper triangle is `T`'s lower one
    with controller.limit(limits=torch.get_num_threads(), user_api="blas"):
        w, _, info = solve(
            work.numpy().T, compute_v=0, lower=0, lwork=lwork, liwork=liwork, overwrite_a=1
        )
    if info != 0:
        return torch.linalg.eigvalsh(T) if not scratch else T.new_full((n,), float("nan"))
    return torch.from_numpy(w)
