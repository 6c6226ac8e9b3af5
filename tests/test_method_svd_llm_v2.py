"""SVD-LLM V2: eigen truncation without damping, heterogeneous allocation by type, ablations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import load_calibrated, matrix_ctx

from svdzoo import linalg
from svdzoo.allocation import achieved_ratio
from svdzoo.compression import Statistics, compress, matrix_infos
from svdzoo.methods import get_method, requirements
from svdzoo.methods.base import AllocationContext
from svdzoo.methods.parts import Whitened
from svdzoo.models import adapter_for

CALIB = dict(corpus="pydoc", nsamples=16, seqlen=64, seed=3)
NAMES = ("svd-llm-v2", "svd-llm-v2-truncation", "svd-llm-v2-allocation")


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(m=24, n=16, tokens=200, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    X = torch.randn(n, tokens, generator=g, dtype=torch.float64)
    if rank is not None:  # inputs confined to a subspace: rank-deficient Gram
        X = torch.randn(n, rank, generator=g, dtype=torch.float64) @ X[:rank]
    X = X * torch.linspace(0.2, 3.0, n, dtype=torch.float64)[:, None]
    return W, X


@pytest.fixture(scope="module", params=["llama", "opt"])
def family(request, tiny_llama_dir, tiny_opt_dir):
    path = tiny_llama_dir if request.param == "llama" else tiny_opt_dir
    return load_calibrated(path, progress=False, **CALIB)


def _spectrum_ctx(model, stats, method):
    """The allocation context the driver builds (spectrum oracle over the real Grams)."""
    adapter = adapter_for(model)
    mods = {name: (layer, t, lin) for name, layer, t, lin in adapter.iter_targets(model)}

    def spectrum(name):
        layer, t, lin = mods[name]
        ctx = matrix_ctx(
            lin.weight.detach().double(), stats.gram(layer, adapter.group_of(t)), name=name
        )
        return method.factoriser.spectrum(ctx)

    return AllocationContext(stats=stats, spectrum=spectrum, options=dict(method.options))


def test_registered_with_gram_only():
    for name in NAMES:
        assert requirements(name) == {"gram"}
        assert not get_method(name).sequential
    assert get_method("svd-llm-v2").factoriser == Whitened("eigen")
    assert get_method("svd-llm-v2-truncation").factoriser == Whitened("eigen")
    assert get_method("svd-llm-v2-allocation").factoriser == Whitened("cholesky")


def test_truncation_on_rank_deficient_gram_needs_no_damping():
    """8 input directions only: eigen drops the empty ones and the loss identity stays exact."""
    W, X = _data(rank=8)
    H = X @ X.T
    k = 5
    wh = linalg.eigen_whitener(H)
    assert wh.rank == 8 and wh.shift == 0.0
    fac = get_method("svd-llm-v2").factoriser(matrix_ctx(W, H), k)
    assert torch.isfinite(fac.A).all() and torch.isfinite(fac.B).all()
    loss = float(((W - fac.A @ fac.B) @ X).square().sum())
    sigma = Whitened("eigen").spectrum(matrix_ctx(W, H))
    assert loss == pytest.approx(float(sigma[k:].square().sum()), rel=1e-6)
    # Cholesky needs its damping fallback here, and its answer is no better on the true H
    chol = linalg.cholesky_whitener(H)
    assert chol.fallback is not None and chol.shift > 0
    fc = Whitened("cholesky")(matrix_ctx(W, H), k)
    assert loss <= linalg.layer_loss(W, fc.A, fc.B, H) * (1 + 1e-9)


def test_v2_truncation_equals_svd_llm_where_gram_is_positive_definite():
    W, X = _data()
    H = X @ X.T
    for k in (1, 6, 12):
        a = get_method("svd-llm-v2-truncation").factoriser(matrix_ctx(W, H), k)
        b = get_method("svd-llm").factoriser(matrix_ctx(W, H), k)
        assert torch.allclose(a.A @ a.B, b.A @ b.B, rtol=0, atol=1e-8 * float(W.abs().max()))


@pytest.mark.parametrize("ratio", [0.2, 0.4, 0.6, 0.8])
def test_heterogeneous_allocation_meets_the_budget(family, ratio):
    model, _, stats = family
    for name in ("svd-llm-v2", "svd-llm-v2-allocation"):
        method = get_method(name)
        infos = matrix_infos(model)
        ranks = method.allocator(infos, ratio, _spectrum_ctx(model, stats, method))
        assert abs(achieved_ratio(infos, ranks) - ratio) <= 0.005


def test_higher_truncation_loss_is_compressed_less(family):
    """Within a type, ratios follow 1/log L: the larger-loss matrix keeps more (unless clamped)."""
    model, _, stats = family
    method = get_method("svd-llm-v2")
    infos = matrix_infos(model)
    actx = _spectrum_ctx(model, stats, method)
    ranks = method.allocator(infos, 0.4, actx)
    losses = actx.report["losses"]
    assert actx.report["kind"] == "heterogeneous-by-type"
    ratio = {i.name: 1 - ranks[i.name] * (i.m + i.n) / (i.m * i.n) for i in infos}
    unit = {i.name: (i.m + i.n) / (i.m * i.n) for i in infos}  # one rank, as a ratio
    by_type: dict[str, list] = {}
    for i in infos:
        by_type.setdefault(i.type, []).append(i.name)
    compared = 0
    for names in by_type.values():
        for a in names:
            for b in names:
                if math.log(losses[a]) > math.log(losses[b]) * 1.02:  # clearly larger loss
                    assert ratio[a] <= ratio[b] + unit[a] + 1e-9, (a, b)  # up to rounding
                    compared += 1
    assert compared > 0
    assert len({round(r, 3) for r in ratio.values()}) > 1  # not uniform


def test_v2_allocation_uses_cholesky_factors_at_non_uniform_ranks(family):
    """The allocation ablation: SVD-LLM's factors, V2's ranks (not the uniform ones)."""
    model, tok, stats = family
    m = copy.deepcopy(model)
    man = compress(m, "svd-llm-v2-allocation", 0.4, stats=Statistics(gram=stats), tokenizer=tok)
    assert abs(man["achieved_ratio"] - 0.4) <= 0.005
    uni = compress(copy.deepcopy(model), "svd-llm", 0.4, stats=Statistics(gram=stats))
    ranks = {n: r["rank"] for n, r in man["modules"].items()}
    assert ranks != {n: r["rank"] for n, r in uni["modules"].items()}
    adapter = adapter_for(model)
    for name, layer, t, lin in list(adapter.iter_targets(model))[:3]:
        ctx = matrix_ctx(
            lin.weight.detach().double(), stats.gram(layer, adapter.group_of(t)), name=name
        )
        ref = Whitened("cholesky")(ctx, ranks[name])
        got = m.get_submodule(name)
        W_got = got.A.weight.detach().double() @ got.B.weight.detach().double()
        assert torch.allclose(W_got, ref.A @ ref.B, atol=1e-5)


def _type_spread(infos, ranks) -> float:
    """Summed over types, the spread (max - min) of the per-matrix ratios within a type."""
    by_type: dict[str, list[float]] = {}
    for i in infos:
        by_type.setdefault(i.type, []).append(1 - ranks[i.name] * (i.m + i.n) / (i.m * i.n))
    return sum(max(r) - min(r) for r in by_type.values())


def test_loss_tokens_rescales_the_losses_and_evens_the_ratios(family):
    """`loss_tokens`: `L` as if the Gram summed that many tokens (`sqrt` of the token
    ratio). At the calibration's own count nothing changes; more tokens make `1/log L`
    flatter, so the ratios within a type move towards the uniform ones."""
    from svdzoo.methods.svd_llm_v2 import calibration_tokens

    model, _, stats = family
    tokens = calibration_tokens(stats)
    assert tokens == CALIB["nsamples"] * CALIB["seqlen"]
    method = get_method("svd-llm-v2")
    infos = matrix_infos(model)

    def allocate(loss_tokens):
        actx = _spectrum_ctx(model, stats, method)
        if loss_tokens is not None:
            actx.options = {**actx.options, "loss_tokens": loss_tokens}
        return method.allocator(infos, 0.4, actx), actx.report

    base, rep = allocate(None)
    same, rep_same = allocate(tokens)
    assert same == base and rep_same["losses"] == rep["losses"]
    assert rep["loss_tokens"] is None and rep_same["calibration_tokens"] == tokens
    more, rep_more = allocate(tokens * 10_000)
    for name, loss in rep["losses"].items():
        assert rep_more["losses"][name] == pytest.approx(100 * loss, rel=1e-12)
    assert abs(achieved_ratio(infos, more) - 0.4) <= 0.005
    assert _type_spread(infos, more) < _type_spread(infos, base)


def test_loss_tokens_needs_one_token_count():
    from types import SimpleNamespace

    from svdzoo.errors import ConfigError
    from svdzoo.methods.svd_llm_v2 import calibration_tokens

    assert calibration_tokens(SimpleNamespace(manifest={"counts": {"a": 64, "b": 64}})) == 64
    with pytest.raises(ConfigError, match=r"one token count .* has \[32, 64\]"):
        calibration_tokens(SimpleNamespace(manifest={"counts": {"a": 64, "b": 32}}))
    with pytest.raises(ConfigError, match="needs the Gram statistics"):
        calibration_tokens(None)
