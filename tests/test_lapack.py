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
