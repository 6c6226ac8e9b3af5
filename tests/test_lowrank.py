"""Low-rank modules: exact forward, parameter accounting, rebuild from spec + state dict."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import random_tiny  # noqa: E402
from torch import nn  # noqa: E402

from svdzoo import (  # noqa: E402
    column_split,  # noqa: E402
    linalg,
    lowrank,
)
from svdzoo.lowrank import ColumnPreservingLinear, LowRankLinear  # noqa: E402
from svdzoo.param_counts import (  # noqa: E402
    column_params,
    dense_params,
    lowrank_params,
    worth_factoring,
)

F64 = torch.float64


def _factors(m=12, n=10, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(m, k, generator=g, dtype=F64),
        torch.randn(k, n, generator=g, dtype=F64),
        torch.randn(m, generator=g, dtype=F64),
    )


def _split():
    g = torch.Generator().manual_seed(1)
    m, n, N = 48, 40, 400
    W = torch.randn(m, n, generator=g, dtype=F64)
    X = torch.randn(n, N, generator=g, dtype=F64)
    X[[2, 5, 11, 17, 23, 29, 30, 36]] *= 10.0
    split = column_split.column_preserving_split(W, X @ X.T, 6)
    assert split is not None and split.n_kept > 0
    return split


def test_lowrank_forward_matches_dense_product():
    A, B, b = _factors()
    mod = LowRankLinear.from_factors(A, B, bias=b, dtype=F64)
    assert (mod.in_features, mod.out_features, mod.rank) == (10, 12, 4)
    assert mod.B.weight.shape == (4, 10) and mod.A.weight.shape == (12, 4)
    x = torch.randn(3, 5, 10, dtype=F64)
    assert torch.allclose(mod(x), x @ (A @ B).T + b, atol=1e-12)
    assert torch.allclose(mod.weight_product(), A @ B)
    nob = LowRankLinear.from_factors(A, B, dtype=torch.float32)
    assert nob.A.bias is None and nob.A.weight.dtype == torch.float32


def test_column_preserving_forward_matches_split():
    split = _split()
    b = torch.randn(48, dtype=F64)
    mod = ColumnPreservingLinear.from_split(split, bias=b, dtype=F64)
    assert torch.equal(mod.kept_idx, split.kept_idx)
    x = torch.randn(2, 7, 40, dtype=F64)
    assert torch.allclose(mod(x), x @ split.product().T + b, atol=1e-10)
    assert torch.allclose(mod.weight_product(), split.product(), atol=1e-12)


def test_modules_own_their_storage():
    """A compressed module shares no storage with the dense layer's bias or the factors it
    was built from (same dtype and device, where `to` would return them as they are): an
    in-place update of one, as fine-tuning makes, leaves the other alone."""
    A, B, b = _factors()
    A0, B0, b0 = A.clone(), B.clone(), b.clone()
    mod = LowRankLinear.from_factors(A, B, bias=b, dtype=F64)
    split = _split()
    kept0, W0 = split.W_kept.clone(), split.A.clone()
    b48 = torch.randn(48, dtype=F64)
    b48_0 = b48.clone()
    col = ColumnPreservingLinear.from_split(split, bias=b48, dtype=F64)
    with torch.no_grad():
        for p in [*mod.parameters(), *col.parameters()]:
            p.add_(1.0)
    assert torch.equal(A, A0) and torch.equal(B, B0) and torch.equal(b, b0)
    assert torch.equal(split.W_kept, kept0) and torch.equal(split.A, W0)
    assert torch.equal(b48, b48_0)


def _weight_params(mod: nn.Module) -> int:
    return sum(p.numel() for n, p in mod.named_parameters() if not n.endswith("bias"))


def test_parameter_accounting_matches_modules():
    A, B, b = _factors(m=12, n=10, k=4)
    mod = LowRankLinear.from_factors(A, B, bias=b)
    assert _weight_params(mod) == lowrank_params(12, 10, 4)
    assert sum(p.numel() for p in mod.parameters()) == lowrank_params(12, 10, 4, True)
    split = _split()
    cmod = ColumnPreservingLinear.from_split(split)
    assert _weight_params(cmod) == column_params(48, 40, split.rank, split.n_kept)
    assert _weight_params(cmod) == split.params <= lowrank_params(48, 40, 6)
    assert dense_params(12, 10) == 120 and dense_params(12, 10, True) == 132
    # bias counted equally on both sides: it never changes the removed count
    assert dense_params(12, 10, True) - lowrank_params(12, 10, 4, True) == (
        dense_params(12, 10) - lowrank_params(12, 10, 4)
    )


def test_worth_factoring_boundary():
    assert worth_factoring(64, 64, 31)
    assert not worth_factoring(64, 64, 32)  # 32*128 == 64*64: not smaller
    assert not worth_factoring(2, 2, 1)
    assert worth_factoring(172, 64, 46) and not worth_factoring(172, 64, 47)


@pytest.mark.parametrize("which", ["lowrank", "column"])
def test_rebuild_from_spec_and_state_dict(tmp_path, which):
    from safetensors.torch import load_file, save_model

    if which == "lowrank":
        A, B, b = _factors()
        mod = LowRankLinear.from_factors(A, B, bias=b, dtype=torch.float32)
        x = torch.randn(4, 10)
    else:
        mod = ColumnPreservingLinear.from_split(_split(), bias=None, dtype=torch.float32)
        x = torch.randn(4, 40)
    spec = lowrank.module_spec(mod)
    assert spec["type"] == which and spec["rank"] == mod.rank
    assert spec["kept_columns"] == (mod.n_kept if which == "column" else 0)
    holder = nn.Sequential(mod)
    save_model(holder, str(tmp_path / "w.safetensors"))
    state = load_file(str(tmp_path / "w.safetensors"))

    rebuilt = nn.Sequential(lowrank.build_from_spec(spec, dtype=torch.float32, device="cpu"))
    rebuilt.load_state_dict(state)
    assert torch.equal(rebuilt(x), holder(x))

    # the compressed-model loader path: empty weights, then assign
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        empty = nn.Sequential(lowrank.build_from_spec(spec, dtype=torch.float32, device="cpu"))
    res = empty.load_state_dict(state, assign=True)
    assert not res.missing_keys and not res.unexpected_keys
    assert torch.equal(empty(x), holder(x))


def test_dtype_cast_keeps_indices():
    mod = ColumnPreservingLinear.from_split(_split(), dtype=torch.float32)
    mod = mod.to(torch.bfloat16)
    assert mod.kept_idx.dtype == torch.long and mod.A.weight.dtype == torch.bfloat16
    assert mod(torch.randn(2, 40, dtype=torch.bfloat16)).shape == (2, 48)


def test_fresh_modules_are_initialised_and_finite():
    mod = LowRankLinear(10, 12, 3)
    cmod = ColumnPreservingLinear(10, 12, 3, 2)
    assert torch.isfinite(mod(torch.randn(2, 10))).all()
    assert torch.isfinite(cmod(torch.randn(2, 10))).all()
    assert cmod.kept.weight.shape == (12, 2) and cmod.B.weight.shape == (3, 8)


def test_drop_in_replacement_in_a_llama_block():
    model = random_tiny("llama", layers=1)
    ids = torch.randint(0, 258, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
        attn = model.model.layers[0].self_attn
        W = attn.k_proj.weight.double()  # 32 x 64 (GQA: narrower than q)
        f = linalg.svd_truncate(W, 32)  # full rank
        attn.k_proj = LowRankLinear.from_factors(f.A, f.B, dtype=torch.float32)
        out = model(ids).logits
    assert torch.allclose(out, ref, atol=1e-4)


def test_bad_factors_and_specs_are_rejected():
    A, B, b = _factors()
    with pytest.raises(lowrank.SpecError):
        LowRankLinear.from_factors(A, B.T)
    with pytest.raises(lowrank.SpecError):
        LowRankLinear.from_factors(A, B, bias=b[:3])
    with pytest.raises(lowrank.SpecError):
        lowrank.build_from_spec({"type": "lowrank"})
    with pytest.raises(lowrank.SpecError):
        lowrank.build_from_spec(
            {"type": "magic", "in_features": 2, "out_features": 2, "rank": 1, "bias": False}
        )
    with pytest.raises(lowrank.SpecError):
        lowrank.module_spec(nn.Linear(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_modules_on_cuda():
    A, B, b = _factors()
    mod = LowRankLinear.from_factors(A.cuda(), B.cuda(), bias=b.cuda(), dtype=torch.float32)
    assert mod.A.weight.device.type == "cuda"
    x = torch.randn(3, 10, device="cuda")
    assert torch.allclose(mod(x), x @ (A @ B).float().cuda().T + b.float().cuda(), atol=1e-4)
    cmod = ColumnPreservingLinear.from_split(_split(), dtype=torch.float32, device="cuda")
    assert cmod.kept_idx.device.type == "cuda"
    spec = lowrank.module_spec(cmod)
    rebuilt = lowrank.build_from_spec(spec, dtype=torch.float32, device="cuda")
    rebuilt.load_state_dict(cmod.state_dict())
    x = torch.randn(2, 40, device="cuda")
    assert torch.equal(rebuilt(x), cmod(x))
