"""svdzoo's compositions (methods/composed.py): built from the papers' parts, and behaving as
the parts they are built from where those parts' own properties say they must."""

from __future__ import annotations

import pytest
import torch
from helpers import matrix_ctx

from svdzoo import codehash, column_split, linalg
from svdzoo.errors import ConfigError
from svdzoo.methods import get_method
from svdzoo.methods.adasvd import AdaComp
from svdzoo.methods.base import GRAM, SENS_DUO, accepted_options, check_options
from svdzoo.methods.composed import ColumnAdaComp
from svdzoo.methods.duo_svd import ColumnPreserving, KnapsackKL

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def _layer(seed: int = 0, m: int = 48, n: int = 40, k: int = 6):
    """A rank-8 weight plus four columns off its structure, compressed to rank `k` (the
    column split pays under Duo-SVD's official search: its pre-check at rank 8 would look
    past the one good trade), the Gram of the original inputs and of perturbed
    ("compressed-model") inputs."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, 8, generator=g, dtype=F64) @ torch.randn(8, n, generator=g, dtype=F64)
    W[:, :4] += 5.0 * torch.randn(m, 4, generator=g, dtype=F64)
    X = torch.randn(n, 400, generator=g, dtype=F64)
    Xp = X + 0.3 * torch.randn(n, 400, generator=g, dtype=F64)
    return W, X @ X.T, Xp @ Xp.T, k


def test_on_the_original_inputs_it_is_duo_svd_column_split():
    """adaComp's two steps are fixed points at the whitened optimum when the data are the
    original inputs, so on the rest's Gram they leave Duo-SVD's split unchanged."""
    W, H, _, k = _layer()
    out = ColumnAdaComp()(matrix_ctx(W, H, Hp=H), k)
    ref = ColumnPreserving()(matrix_ctx(W, H), k)
    assert isinstance(out, column_split.ColumnSplit) and isinstance(ref, column_split.ColumnSplit)
    assert torch.equal(out.kept_idx, ref.kept_idx)
    assert torch.allclose(out.product(), ref.product(), atol=1e-8, rtol=1e-8)


def test_on_compressed_inputs_it_refits_only_the_low_rank_part():
    W, H, Hp, k = _layer()
    out = ColumnAdaComp()(matrix_ctx(W, H, Hp=Hp), k)
    ref = ColumnPreserving()(matrix_ctx(W, H), k)
    assert isinstance(out, column_split.ColumnSplit)
    assert torch.equal(out.kept_idx, ref.kept_idx) and torch.equal(out.W_kept, ref.W_kept)
    assert out.params == ref.params and out.params <= k * (W.shape[0] + W.shape[1])
    assert not torch.allclose(out.A @ out.B, ref.A @ ref.B, atol=1e-6)
    # its recorded loss is the data loss on the compressed inputs; kept columns are exact,
    # so the whole layer's loss is the rest's
    D = W - out.product()
    assert torch.allclose(D[:, out.kept_idx], torch.zeros_like(D[:, out.kept_idx]))
    assert out.loss == pytest.approx(float(torch.trace(D @ Hp @ D.T)), rel=1e-9)
    # the U-step alone never raises that loss above the split's start
    rest = out.rest_idx
    Hr = Hp[rest][:, rest]
    A = linalg.adacomp_u_step(W[:, rest], ref.B, Hr)
    assert linalg.layer_loss(W[:, rest], A, ref.B, Hr) <= linalg.layer_loss(
        W[:, rest], ref.A, ref.B, Hr
    ) * (1 + 1e-12)


def test_without_columns_or_when_the_split_does_not_pay_it_is_adacomp():
    W, H, Hp, k = _layer()
    plain = ColumnAdaComp(columns=False)(matrix_ctx(W, H, Hp=Hp), k)
    ref = AdaComp()(matrix_ctx(W, H, Hp=Hp), k)
    assert torch.allclose(plain.product(), ref.product(), atol=1e-10)
    # an isotropic layer: no column stands out, so the split is rejected
    g = torch.Generator().manual_seed(1)
    W2 = torch.randn(32, 32, generator=g, dtype=F64)
    H2 = torch.eye(32, dtype=F64) * 4
    out = ColumnAdaComp()(matrix_ctx(W2, H2, Hp=H2 * 1.1), 8)
    assert not isinstance(out, column_split.ColumnSplit)
    assert torch.allclose(out.product(), AdaComp()(matrix_ctx(W2, H2, Hp=H2 * 1.1), 8).product())


def test_tau_zero_is_the_split_and_a_bad_tau_is_refused():
    W, H, Hp, k = _layer()
    out = ColumnAdaComp(tau=0)(matrix_ctx(W, H, Hp=Hp), k)
    assert torch.allclose(out.product(), ColumnPreserving()(matrix_ctx(W, H), k).product())
    with pytest.raises(ConfigError, match="tau"):
        ColumnAdaComp(tau=-1)(matrix_ctx(W, H, Hp=Hp), k)


def test_registered_as_compositions_of_the_papers_parts():
    duo_ada, kl_ada = get_method("svdzoo-duo-ada"), get_method("svdzoo-kl-ada")
    for m in (duo_ada, kl_ada):
        assert m.sequential and m.needs == frozenset({GRAM, SENS_DUO})
        assert isinstance(m.allocator, KnapsackKL) and m.allocator.protocol == "independent"
        assert "AdaSVD" in m.paper and "Duo-SVD" in m.paper and "svdzoo composition" in m.description  # fmt: skip
    assert duo_ada.factoriser.columns and not kl_ada.factoriser.columns
    opts = accepted_options(duo_ada)
    assert {"tau", "columns", "accept", "min_retained", "seq_nsamples"} <= opts
    with pytest.raises(ConfigError, match="mrr"):
        check_options(duo_ada, {"mrr": 0.3})


def test_its_code_hash_covers_the_parts_it_borrows_and_no_other_method_sees_it():
    names = {p.name for p in codehash.stage_files("compress", "svdzoo-duo-ada")}
    assert {"composed.py", "adasvd.py", "duo_svd.py"} <= names
    assert "ressvd.py" not in names
    for other in ("svd", "adasvd", "duo-svd"):
        assert "composed.py" not in {p.name for p in codehash.stage_files("compress", other)}
    assert codehash.code_hash("compress", "svdzoo-duo-ada") != codehash.code_hash("compress", "adasvd")  # fmt: skip


# ---------------------------------------------------------------- the claim, on the fixtures
# Only the calibration-corpus claim is asserted: on these tiny models the held-out ranking
# against the paper methods moves with a library version (docs/results.md, "Beyond the
# papers").


@pytest.fixture(scope="module", params=["llama", "opt"])
def grid(request, tiny_llama_dir, tiny_opt_dir):
    """`(family, {(method, ratio): perplexity on pydoc})`: the compositions and SVD-LLM at 40
    and 60 % on a trained tiny model calibrated on pydoc."""
    import copy

    from conftest import CLAIM_CALIB
    from helpers import load_calibrated

    from svdzoo.compression import Statistics, compress
    from svdzoo.data import evaluation_windows
    from svdzoo.evaluation.perplexity import perplexity
    from svdzoo.sensitivity import compute_sensitivity

    path = tiny_llama_dir if request.param == "llama" else tiny_opt_dir
    model, tok, gram = load_calibrated(path, progress=False, **CLAIM_CALIB)
    duo = compute_sensitivity(model, tok, gram, "duo", nsamples=8, batch_size=8)
    windows = evaluation_windows(tok, "pydoc", 128, "test", max_windows=16)
    out: dict[tuple[str, float], float] = {}
    for ratio in (0.4, 0.6):
        for method in ("svd-llm", "svdzoo-kl-ada", "svdzoo-duo-ada"):
            m = copy.deepcopy(model)
            stats = Statistics(gram=gram, sensitivity={"duo": duo})
            compress(m, method, ratio, stats=stats, tokenizer=tok)
            out[method, ratio] = perplexity(m, windows, batch_size=16)
    return request.param, out


@pytest.mark.parametrize("method", ["svdzoo-kl-ada", "svdzoo-duo-ada"])
def test_the_compositions_beat_svd_llm_their_common_base(grid, method):
    """Every part they add (KL allocation, column split, adaComp) changes SVD-LLM's whitened
    truncation; together they must beat it on the corpus they were calibrated on. (On the
    held-out corpus the ratio-independent table's allocation does not always beat uniform
    SVD-LLM on these tiny models: measured, 29.3 vs 27.7 for svdzoo-duo-ada at 60 % on the
    LLaMA fixture.)"""
    family, ppl = grid
    for ratio in (0.4, 0.6):
        mine, base = ppl[method, ratio], ppl["svd-llm", ratio]
        assert mine < base, f"{family}: {method} at {ratio:.0%}: {mine:.3f} vs svd-llm {base:.3f}"
