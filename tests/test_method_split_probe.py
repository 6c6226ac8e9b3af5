"""svdzoo-duo-probed: Duo-SVD's column splits kept only where the model's calibration KL drops."""

from __future__ import annotations

import copy
import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import load_calibrated  # noqa: E402

from svdzoo.compression import Statistics, compress  # noqa: E402
from svdzoo.errors import ConfigError  # noqa: E402
from svdzoo.methods import get_method  # noqa: E402
from svdzoo.methods.base import check_options  # noqa: E402
from svdzoo.methods.probe import probe_windows  # noqa: E402
from svdzoo.methods.split_probe import KLProbe, ProbedSplits  # noqa: E402
from svdzoo.sensitivity import compute_sensitivity  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CALIB = dict(corpus="pydoc", nsamples=32, seqlen=64, seed=3)
INDEPENDENT = {"protocol": "independent"}
RATIO = 0.3


@pytest.fixture(scope="module")
def setup(tiny_llama_dir):
    model, tok, gram = load_calibrated(tiny_llama_dir, **CALIB)
    table = compute_sensitivity(model, tok, gram, "duo", nsamples=16, batch_size=16)
    return model, tok, Statistics(gram=gram, sensitivity={"duo": table})


def _compress(setup, method, options=None):
    model, tok, stats = setup
    m2 = copy.deepcopy(model)
    return m2, compress(m2, method, RATIO, stats=stats, tokenizer=tok, options=options)


@pytest.fixture(scope="module")
def runs(setup):
    return {
        "probed": _compress(setup, "svdzoo-duo-probed"),
        "duo": _compress(setup, "duo-svd-independent"),
        "plain": _compress(setup, "duo-svd-allocation", INDEPENDENT),
    }


def _kl(setup, model, nsamples=8) -> float:
    """The probe's KL of `model` from the original model, measured afresh."""
    original, tok, stats = setup
    windows = probe_windows(stats.gram.manifest, tok, {"search_nsamples": nsamples})
    probe = KLProbe(copy.deepcopy(original), windows)
    probe.model = model
    return probe()


def test_each_split_is_duo_svds_or_the_plain_truncation(runs):
    """Candidates are exactly duo-svd-independent's splits; a kept one is that split, a
    rejected one the plain truncation at the same ranks (duo-svd-allocation's)."""
    _, probed = runs["probed"]
    _, duo = runs["duo"]
    _, plain = runs["plain"]
    report = probed["allocation"]["split_probe"]
    splits = {n for n, r in duo["modules"].items() if r["kept_columns"] > 0}
    assert splits, "duo-svd kept no split on the reference model"
    assert {c["matrix"] for c in report["candidates"]} == splits
    kept = {c["matrix"] for c in report["candidates"] if c["kept"]}
    assert report["kept"] == len(kept)
    for name, rec in probed["modules"].items():
        want = duo if name in kept else plain
        assert rec == want["modules"][name], name
    assert probed["allocation"]["knapsack"] == duo["allocation"]["knapsack"]
    assert abs(probed["achieved_ratio"] - RATIO) <= 0.005


def test_the_greedy_pass_keeps_a_split_only_when_the_kl_drops(runs):
    report = runs["probed"][1]["allocation"]["split_probe"]
    gains = [c["gain"] for c in report["candidates"]]
    assert gains == sorted(gains, reverse=True) and all(g > 0.01 for g in gains)
    kl = report["kl_without_splits"]
    for c in report["candidates"]:
        assert c["kept"] == (c["kl"] < kl)
        kl = c["kl"] if c["kept"] else kl
    assert report["kl"] == kl <= report["kl_without_splits"]
    assert report["windows"] == 8  # the method's search_nsamples, within the Gram's 32


def test_the_recorded_kls_are_the_models(setup, runs):
    """The report's KLs are those of the models it describes, measured afresh: without
    splits, duo-svd-allocation's; at the end, the saved model's."""
    report = runs["probed"][1]["allocation"]["split_probe"]
    assert _kl(setup, runs["plain"][0]) == pytest.approx(report["kl_without_splits"], rel=1e-5)
    assert _kl(setup, runs["probed"][0]) == pytest.approx(report["kl"], rel=1e-5)
    assert report["kl"] < _kl(setup, runs["duo"][0]) or report["kept"] == len(report["candidates"])


def test_a_margin_no_split_can_meet_gives_the_plain_model(setup, runs):
    model, manifest = _compress(setup, "svdzoo-duo-probed", {"margin": 0.999})
    assert manifest["allocation"]["split_probe"]["kept"] == 0
    assert all(r["kept_columns"] == 0 for r in manifest["modules"].values())
    plain = runs["plain"][0].state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, plain[key], rtol=0, atol=0)


def test_kl_probe_is_zero_for_the_original_and_grows_with_damage(setup):
    original, tok, stats = setup
    model = copy.deepcopy(original)
    windows = probe_windows(stats.gram.manifest, tok, {"search_nsamples": 4})
    probe = KLProbe(model, windows)
    assert probe() == pytest.approx(0.0, abs=1e-6)
    lin = model.model.layers[0].mlp.down_proj
    with torch.no_grad():
        lin.weight.mul_(0.5)
    small = probe()
    with torch.no_grad():
        lin.weight.zero_()
    assert 0 < small < probe()


def test_options_and_shape_are_checked_before_compute():
    probed = get_method("svdzoo-duo-probed")
    check_options(probed, {"margin": 0.01, "search_nsamples": 4, "accept": 0.0})
    for bad in ({"margin": 1.5}, {"margin": 1.0}, {"search_nsamples": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):  # 1.0: no split could stay
            check_options(probed, bad)
    with pytest.raises(ConfigError, match="takes no option 'margin'"):
        check_options(get_method("duo-svd-independent"), {"margin": 0.01})
    assert probed.replays_calibration
    with pytest.raises(ValueError, match="selector"):
        dataclasses.replace(probed, sequential=True)
    with pytest.raises(ValueError, match="selector"):  # its reused trial modules skip it
        dataclasses.replace(probed, allocator=get_method("ressvd").allocator)


def test_a_trial_whose_kl_is_not_finite_is_rejected_and_recorded_as_null():
    """An overflowing split (NaN KL) stays out, and the manifest stays writable JSON."""
    installed = {"a": "plain-a", "b": "plain-b", "c": "plain-c"}
    kls = iter([1.0, float("nan"), 0.9, 0.95])

    class Probe:
        windows = torch.zeros(3, 4)

        def __call__(self):
            return next(kls)

    report = ProbedSplits().select(
        [("a", 0.3, "split-a"), ("b", 0.2, "split-b"), ("c", 0.1, "split-c")],
        Probe(),
        installed.__getitem__,
        installed.__setitem__,
    )
    assert installed == {"a": "plain-a", "b": "split-b", "c": "plain-c"}
    assert [r["kl"] for r in report["candidates"]] == [None, 0.9, 0.95]
    assert [r["kept"] for r in report["candidates"]] == [False, True, False]
    assert (report["kept"], report["kl"], report["windows"]) == (1, 0.9, 3)
