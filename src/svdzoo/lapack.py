"""Symmetric eigenvalues on a CPU through scipy's LAPACK (OpenBLAS) rather than torch's (MKL).

Duo-SVD's split search is made of eigenvalue-only solves (`T`'s spectrum per candidate).
On the AMD EPYC hosts this project runs on, torch's MKL `?syevd` takes 1.5-1.6 x the time
of the OpenBLAS one that scipy ships (r = 576: 12.2 against 7.8 ms in float32, 20.9
against 13.6 ms in float64; r = 1024: 59.8 against 36.9 and 103.8 against 64.4 ms; one
thread; docs/results.md, "Compression speed"): MKL's tridiagonalisation runs its BLAS-2
half slowly on non-Intel CPUs. GEMMs are as fast in both, so only these solves move. On
an Intel Xeon with AMX (2026-12-07, `benchmarks/bench_cpu_lapack.py`) MKL takes 0.85-1.11 x
OpenBLAS's time up to r = 1024, and is ahead from r = 1536 in
float64 and r = 2048 in float32 (0.55-0.66 x); the split search on SmolLM2 took the same
time on either there, so OpenBLAS stays the default everywhere.

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
from typing import TYPE_CHECKING, Any

from svdzoo.errors import ConfigError
from svdzoo.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor

ENV = "SVDZOO_CPU_LAPACK"
BACKENDS = ("scipy", "torch")


def check_environment() -> str:
    """`SVDZOO_CPU_LAPACK` as set (`scipy` when unset); ConfigError for anything else. Cheap
    (no scipy import): `compress` calls it before any model loads."""
    choice = os.environ.get(ENV, "scipy").strip().lower() or "scipy"
    if choice not in BACKENDS:
        raise ConfigError(f"{ENV}={choice!r}: choose one of {BACKENDS}")
    return choice


def backend() -> str:
    """The CPU backend: `SVDZOO_CPU_LAPACK` (`scipy`, the default, or `torch`); `torch` when
    scipy cannot be imported."""
    choice = check_environment()
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
def _workspace(routine: str, n: int, vectors: bool) -> tuple[int, int]:
    """LAPACK's optimal workspace (the wrappers' defaults are the minimum, which makes the
    tridiagonalisation unblocked: 1.3 x slower at r = 1024)."""
    lapack, _ = _scipy()  # type: ignore[misc]
    query = getattr(lapack, f"{routine}_lwork")
    if routine.endswith("evr"):  # one query for both jobs
        lwork, liwork = query(n, lower=0)[:2]
    else:
        lwork, liwork = query(n, compute_v=int(vectors), lower=0)[:2]
    return int(lwork), int(liwork)


def on_scipy(T: Tensor) -> bool:
    """Whether `T`'s solves here go through scipy's LAPACK (a CPU float tensor, the default)."""
    return (
        T.device.type == "cpu"
        and T.ndim == 2
        and T.dtype in (torch.float32, torch.float64)
        and T.shape[-1] > 0
        and backend() == "scipy"
    )


def _scratch(T: Tensor, overwrite: bool) -> tuple[Tensor, bool]:
    """A contiguous buffer with `T`'s values that LAPACK may destroy, and whether it is `T`."""
    if overwrite and T.is_contiguous():
        return T, True
    return T.clone(memory_format=torch.contiguous_format), False


def eigvalsh(T: Tensor, *, overwrite: bool = False) -> Tensor:
    """The eigenvalues of the symmetric `T` (its lower triangle, as `torch.linalg.eigvalsh`
    reads), ascending, in `T`'s dtype and device. `overwrite`: `T` is scratch the solve may
    destroy (saves a copy on the scipy path); the values are then NaN if LAPACK does not
    converge, which torch's solver reports as an error otherwise."""
    if not on_scipy(T):
        return torch.linalg.eigvalsh(T)
    lapack, controller = _scipy()  # type: ignore[misc]
    n, kind = T.shape[-1], "s" if T.dtype == torch.float32 else "d"
    lwork, liwork = _workspace(f"{kind}syevd", n, False)
    work, scratch = _scratch(T, overwrite)
    # `work^T` is Fortran-ordered over `work`'s memory; its upper triangle is `T`'s lower one
    with controller.limit(limits=torch.get_num_threads(), user_api="blas"):
        w, _, info = getattr(lapack, f"{kind}syevd")(
            work.numpy().T, compute_v=0, lower=0, lwork=lwork, liwork=liwork, overwrite_a=1
        )
    if info != 0:
        return torch.linalg.eigvalsh(T) if not scratch else T.new_full((n,), float("nan"))
    return torch.from_numpy(w)


# up to this fraction of the spectrum, the top eigenpairs come from MRRR on the wanted index
# range (`?syevr`), past it from a full divide-and-conquer (`?syevd`): float64, one thread,
# they cross near k = 0.17 r at r = 576 (26 against 32 ms at k = 72) and 0.3 r at r = 1024
EVR_FRACTION = 0.2


def eigh_top(T: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top `k` eigenpairs of the symmetric `T` (its lower triangle), values descending
    and eigenvectors as columns, to the working precision of `T`'s dtype: on a CPU only
    the wanted ones (`?syevr`, at r = 1024 in float64 55 ms for k = 1 and 107 ms for
    k = 128, against 220 ms for torch's full `eigh`), else torch's `eigh`, sliced."""
    n = T.shape[-1]
    if not 0 <= k <= n:
        raise ValueError(f"k = {k} eigenpairs of a {n} x {n} matrix")
    if k == 0:
        return T.new_empty(0), T.new_empty(n, 0)
    if on_scipy(T):
        lapack, controller = _scipy()  # type: ignore[misc]
        kind = "s" if T.dtype == torch.float32 else "d"
        work, _ = _scratch(T, False)
        with controller.limit(limits=torch.get_num_threads(), user_api="blas"):
            if k <= EVR_FRACTION * n:
                lwork, liwork = _workspace(f"{kind}syevr", n, True)
                w, z, found, _, info = getattr(lapack, f"{kind}syevr")(
                    work.numpy().T, compute_v=1, range="I", lower=0, il=n - k + 1, iu=n,
                    lwork=lwork, liwork=liwork, overwrite_a=1,
                )  # fmt: skip
                ok = info == 0 and found == k
            else:
                lwork, liwork = _workspace(f"{kind}syevd", n, True)
                w, z, info = getattr(lapack, f"{kind}syevd")(
                    work.numpy().T, compute_v=1, lower=0, lwork=lwork, liwork=liwork,
                    overwrite_a=1,
                )  # fmt: skip
                w, z, ok = w[n - k :], z[:, n - k :], info == 0
        if ok:
            mu = torch.from_numpy(w[:k][::-1].copy())
            return mu, torch.from_numpy(z[:, :k][:, ::-1].copy(order="C"))
    mu, E = torch.linalg.eigh(T)
    return mu.flip(0)[:k], E.flip(1)[:, :k]
