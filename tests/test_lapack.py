"""`svdzoo.lapack`: the CPU eigenvalue solves the split search is made of, through scipy's
LAPACK, against torch's."""

from __future__ import annotations

import pytest
import torch

from svdzoo import lapack
from svdzoo.errors import ConfigError


def _symmetric(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n, generator=g, dtype=torch.float64)
    T = X @ X.T / n + torch.diag(torch.logspace(2, -3, n, dtype=torch.float64))
    return T.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 130])
def test_eigvalsh_matches_torch(dtype, n, monkeypatch):
    monkeypatch.delenv(lapack.ENV, raising=False)
    assert lapack.backend() == "scipy"
    T = _symmetric(n, dtype)
    got, want = lapack.eigvalsh(T), torch.linalg.eigvalsh(T)
    assert got.dtype == dtype and got.shape == (n,)
    assert bool((got[1:] >= got[:-1]).all())  # ascending
    eps = torch.finfo(dtype).eps
    assert float((got - want).abs().max()) <= 50 * n * eps * float(want.abs().max())


def test_eigvalsh_reads_the_lower_triangle_and_keeps_its_input(monkeypatch):
    monkeypatch.delenv(lapack.ENV, raising=False)
    T = _symmetric(40, torch.float64)
    lopsided = T.tril() + 5.0 * torch.ones(40, 40, dtype=torch.float64).triu(1)
    before = lopsided.clone()
    got = lapack.eigvalsh(lopsided)
    assert torch.equal(lopsided, before)  # not overwritten unless asked
    assert torch.allclose(got, torch.linalg.eigvalsh(T), rtol=0, atol=1e-12)
    # a non-contiguous view (the transpose: its lower triangle is `lopsided`'s upper one)
    assert torch.allclose(
        lapack.eigvalsh(lopsided.T), torch.linalg.eigvalsh(lopsided.T), rtol=0, atol=1e-11
    )


def test_eigvalsh_overwrite_uses_the_scratch(monkeypatch):
    monkeypatch.delenv(lapack.ENV, raising=False)
    T = _symmetric(50, torch.float32)
    want = torch.linalg.eigvalsh(T)
    scratch = T.clone()
    got = lapack.eigvalsh(scratch, overwrite=True)
    assert not torch.equal(scratch, T)  # LAPACK worked in place
    assert torch.allclose(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))


def test_backend_switch(monkeypatch):
    T = _symmetric(30, torch.float64)
    monkeypatch.setenv(lapack.ENV, "torch")
    assert lapack.backend() == "torch"
    assert torch.equal(lapack.eigvalsh(T), torch.linalg.eigvalsh(T))
    monkeypatch.setenv(lapack.ENV, "mkl")
    with pytest.raises(ConfigError, match="SVDZOO_CPU_LAPACK"):
        lapack.eigvalsh(T)


def test_eigvalsh_follows_torch_threads(monkeypatch):
    """OpenBLAS runs on torch's thread count inside the solve, and is left as it was."""
    monkeypatch.delenv(lapack.ENV, raising=False)
    _, controller = lapack._scipy()
    seen: list[int] = []
    lib = lapack._scipy()[0]
    real = lib.dsyevd

    def spy(*args, **kwargs):
        seen.extend(info["num_threads"] for info in controller.select(user_api="blas").info())
        return real(*args, **kwargs)

    monkeypatch.setattr(lib, "dsyevd", spy)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        lapack.eigvalsh(_symmetric(20, torch.float64))
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [0, 1, 5, 20, 45, 60])  # 5-20: `?syevr`'s range, 45-60: `?syevd`
def test_eigh_top_gives_the_top_eigenpairs(dtype, k, monkeypatch):
    monkeypatch.delenv(lapack.ENV, raising=False)
    n = 60
    T = _symmetric(n, dtype, seed=k)
    lopsided = T.tril() + 3.0 * torch.ones(n, n, dtype=dtype).triu(1)  # only the lower is read
    mu, E = lapack.eigh_top(lopsided, k)
    assert mu.dtype == E.dtype == dtype and mu.shape == (k,) and E.shape == (n, k)
    want, V = torch.linalg.eigh(T)
    want, V = want.flip(0)[:k], V.flip(1)[:, :k]
    eps = torch.finfo(dtype).eps
    scale = float(torch.linalg.eigvalsh(T).abs().max())
    assert torch.allclose(mu, want, rtol=0, atol=100 * n * eps * scale)
    assert bool((mu[:-1] >= mu[1:]).all())  # descending
    assert torch.allclose(E.T @ E, torch.eye(k, dtype=dtype), atol=100 * n * eps)
    assert torch.allclose(T @ E, E * mu, rtol=0, atol=100 * n * eps * scale)
    if k:  # the same invariant subspace as torch's (the spectrum here has no ties)
        gap = float(torch.linalg.matrix_norm(E @ E.T - V @ V.T, 2))
        assert gap < (1e-9 if dtype == torch.float64 else 1e-3)


def test_eigh_top_refuses_a_rank_past_the_matrix_and_falls_back_to_torch(monkeypatch):
    T = _symmetric(10, torch.float64)
    with pytest.raises(ValueError, match="eigenpairs"):
        lapack.eigh_top(T, 11)
    monkeypatch.setenv(lapack.ENV, "torch")
    mu, E = lapack.eigh_top(T, 3)
    want, V = torch.linalg.eigh(T)
    assert torch.equal(mu, want.flip(0)[:3]) and torch.equal(E, V.flip(1)[:, :3])


def test_the_split_factors_take_lapacks_pairs_on_a_cpu_and_the_certified_route_otherwise(
    monkeypatch,
):
    from svdzoo.column_split import kernels

    T = _symmetric(120, torch.float64)
    calls: list[str] = []
    real_top, real_lapack = kernels._top_eigh, lapack.eigh_top
    monkeypatch.setattr(kernels, "_top_eigh", lambda *a: calls.append("certified") or real_top(*a))
    monkeypatch.setattr(lapack, "eigh_top", lambda *a: calls.append("lapack") or real_lapack(*a))
    monkeypatch.delenv(lapack.ENV, raising=False)
    a = kernels.top_eigenpairs(T, 4)
    monkeypatch.setenv(lapack.ENV, "torch")
    b = kernels.top_eigenpairs(T, 4)
    assert calls[0] == "lapack" and calls[1] == "certified"
    assert torch.allclose(a[0], b[0], rtol=1e-12)
