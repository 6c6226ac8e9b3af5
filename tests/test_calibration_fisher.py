"""FWSVD Fisher statistics: squared-gradient sums equal a direct autograd computation."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import random_tiny  # noqa: E402

from svdzoo.calibration import calibrate_fisher, fisher_information, fisher_to_dir, load_fisher  # noqa: E402
from svdzoo.errors import CacheError, ModelError  # noqa: E402
from svdzoo.models import adapter_for  # noqa: E402


def direct(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Squared gradients of one batch's loss by plain autograd, per target weight."""
    named = {full: lin.weight for full, *_rest, lin in adapter_for(model).iter_targets(model)}
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    grads = torch.autograd.grad(loss, list(named.values()))
    return {k: g.double().square() for k, g in zip(named, grads, strict=True)}


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_fisher_equals_direct_autograd(family, windows):
    model = random_tiny(family)
    info = fisher_information(model, windows, batch_size=2, device="cpu", progress=False)
    expect = [direct(model, windows[:2]), direct(model, windows[2:])]
    for full, (row, col) in info.items():
        g2 = expect[0][full] + expect[1][full]  # summed over batches
        m, n = g2.shape
        assert row.shape == (m,) and col.shape == (n,)
        assert row.dtype == col.dtype == torch.float64
        assert (row >= 0).all() and (col >= 0).all() and row.sum() > 0
        torch.testing.assert_close(row, g2.sum(1), rtol=1e-10, atol=0)
        torch.testing.assert_close(col, g2.sum(0), rtol=1e-10, atol=0)
    # GQA: k/v are narrower than q
    if family == "llama":
        assert info["model.layers.0.self_attn.k_proj"][0].shape == (32,)
        assert info["model.layers.0.self_attn.q_proj"][0].shape == (64,)
    # the model is left as it was: no grads, requires_grad restored, eval mode
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_gradients_the_caller_left_change_nothing_and_are_given_back(windows):
    """A model with gradients from an earlier backward (say a fine-tuning step) got them
    summed into the first batch's gradient and squared with it, and lost them afterwards."""
    model = random_tiny("llama")
    clean = fisher_information(model, windows, batch_size=2, device="cpu", progress=False)
    model(input_ids=windows[:1], labels=windows[:1], use_cache=False).loss.backward()
    left = {n: p.grad.clone() for n, p in model.named_parameters()}
    again = fisher_information(model, windows, batch_size=2, device="cpu", progress=False)
    for full, (row, col) in clean.items():
        assert torch.equal(again[full][0], row) and torch.equal(again[full][1], col), full
    assert all(torch.equal(p.grad, left[n]) for n, p in model.named_parameters())


def test_fisher_cache_roundtrip(tok, tmp_path):
    model = random_tiny("llama")
    kw = dict(corpus="pydoc", nsamples=3, seqlen=16, seed=0, progress=False)
    stats = calibrate_fisher(model, tok, **kw)
    m1 = fisher_to_dir(model, tok, tmp_path / "a", **kw)
    m2 = fisher_to_dir(model, tok, tmp_path / "b", **kw)
    assert m1["sha256"] == m2["sha256"] and m1["kind"] == "fisher" and m1["batches"] == 3
    loaded = load_fisher(tmp_path / "a", expect={"nsamples": 3, "seed": 0})
    name = "model.layers.1.mlp.down_proj"
    assert torch.equal(loaded.row(name), stats.row(name))
    assert loaded.col(name).shape == (128,)
    assert len(loaded.targets) == 2 * 7
    with pytest.raises(CacheError, match="seed"):
        load_fisher(tmp_path / "a", expect={"seed": 1})


def test_fisher_rejects_bad_windows():
    with pytest.raises(ModelError, match="seqlen>=2"):
        fisher_information(
            random_tiny("llama"), torch.zeros(2, 1, dtype=torch.long), progress=False
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fisher_on_cuda_matches_cpu(windows):
    model = random_tiny("llama")
    cpu = fisher_information(model, windows, batch_size=2, device="cpu", progress=False)
    gpu = fisher_information(model, windows, batch_size=2, device="cuda", progress=False)
    assert all(p.device.type == "cpu" for p in model.parameters())  # moved back
    for k, (row, col) in cpu.items():
        torch.testing.assert_close(gpu[k][0], row, rtol=1e-3, atol=1e-12)
        torch.testing.assert_close(gpu[k][1], col, rtol=1e-3, atol=1e-12)
