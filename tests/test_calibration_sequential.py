"""Sequential mode: original vs actual input statistics while layers are compressed in order."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import random_tiny  # noqa: E402

from svdzoo.calibration import SequentialCalibrator, stream_gram_stats  # noqa: E402
from svdzoo.calibration.sequential import SequentialError  # noqa: E402
from svdzoo.calibration.stats import gram_name  # noqa: E402
from svdzoo.models import adapter_for  # noqa: E402
from svdzoo.tokenizer import build_byte_tokenizer  # noqa: E402


def group_inputs(model, windows, batch_size):
    """Whole-model forward hooks: the input of each group's first linear, per layer."""
    adapter = adapter_for(model)
    xs: dict[tuple[int, str], list[torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(adapter.layers(model)):
        for g, members in adapter.groups.items():

            def pre(_m, args, key=(i, g)):
                xs.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1]).double())

            handles.append(layer.get_submodule(members[0]).register_forward_pre_hook(pre))
    with torch.no_grad():
        for s in range(0, windows.shape[0], batch_size):
            model(input_ids=windows[s : s + batch_size], use_cache=False)
    for h in handles:
        h.remove()
    return {k: torch.cat(v) for k, v in xs.items()}


@pytest.mark.parametrize("family", ["llama", "opt", "gemma3"])
def test_without_compression_actual_equals_original(family, windows):
    model = random_tiny(family, layers=3)
    ref = {}
    stream_gram_stats(model, windows, ref.__setitem__, batch_size=3, device="cpu", progress=False)
    seq = SequentialCalibrator(model, windows, batch_size=3, device="cpu", progress=False)
    seen = []
    for i, _layer in seq.layers():
        st = seq.layer_stats(i)
        assert set(st) == set(adapter_for(model).groups)
        for g, s in st.items():
            assert torch.equal(s.H_actual, s.H) and torch.equal(s.C, s.H)
            assert s.count == 4 * 32
            assert torch.equal(s.H, ref[gram_name(i, g)])  # same as plain calibration
        assert seq.streams_coincide
        seen.append(i)
    assert seen == [0, 1, 2]


def test_compressed_layer_changes_actual_stream(windows):
    model = random_tiny("llama", layers=3)
    original = copy.deepcopy(model)
    noise = torch.Generator().manual_seed(1)
    seq = SequentialCalibrator(
        model, windows, batch_size=2, memory_budget=0, device="cpu", progress=False
    )
    for i, layer in seq.layers():
        st = seq.layer_stats(i)
        if i == 0:
            assert torch.equal(st["mlp_in"].C, st["mlp_in"].H)
            with torch.no_grad():  # "compress" layer 0: perturb its down projection
                w = layer.mlp.down_proj.weight
                w.add_(0.5 * torch.randn(w.shape, generator=noise))
            seq.advance(i)
            assert not seq.streams_coincide and seq.divergence() > 0
        if i == 1:
            # X: inputs in the original model; X': inputs in the model compressed so far
            X = group_inputs(original, windows, 2)
            Xa = group_inputs(model, windows, 2)
            for g, s in st.items():
                x, xa = X[(1, g)], Xa[(1, g)]
                assert not torch.equal(x, xa)
                for got, want in ((s.H, x.T @ x), (s.H_actual, xa.T @ xa), (s.C, x.T @ xa)):
                    assert float((got - want).norm() / want.norm()) < 1e-10
    # the compression stays in the model; every layer is back on its home device
    assert not torch.equal(
        model.model.layers[0].mlp.down_proj.weight, original.model.layers[0].mlp.down_proj.weight
    )
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_stats_reflect_partial_compression_within_a_layer(windows):
    """Asking again after replacing q/k/v: attn_out's actual inputs include their effect."""
    model = random_tiny("llama", layers=1)
    seq = SequentialCalibrator(model, windows, batch_size=4, device="cpu", progress=False)
    for i, layer in seq.layers():
        before = seq.layer_stats(i, groups=("attn_out",))["attn_out"]
        with torch.no_grad():
            layer.self_attn.v_proj.weight.mul_(0.5)
        after = seq.layer_stats(i, groups=("attn_out",))["attn_out"]
        assert torch.equal(after.H, before.H)  # the original stream is unaffected
        assert not torch.allclose(after.H_actual, before.H_actual)
        torch.testing.assert_close(after.H_actual, 0.25 * after.H, rtol=1e-10, atol=1e-10)


def test_out_of_order_use_raises(windows):
    seq = SequentialCalibrator(random_tiny("llama", layers=3), windows, progress=False)
    with pytest.raises(SequentialError, match="in order"):
        seq.layer_stats(1)
    seq.layer_stats(0)
    seq.advance(0)
    with pytest.raises(SequentialError, match="in order"):
        seq.advance(0)
    with pytest.raises(SequentialError, match="unknown groups"):
        seq.layer_stats(1, groups=("nope",))
    seq.close()
    for use in (lambda: seq.layer_stats(1), lambda: seq.advance(1)):
        with pytest.raises(SequentialError, match="closed"):  # an IndexError before
            use()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sequential_on_cuda_model_on_host(windows):
    model = random_tiny("llama", layers=3)
    seq = SequentialCalibrator(model, windows, batch_size=3, device="cuda", progress=False)
    for i, layer in seq.layers():
        assert next(layer.parameters()).device.type == "cuda"  # on the device during its turn
        for s in seq.layer_stats(i).values():
            assert s.H.device.type == "cuda"
            torch.testing.assert_close(s.H_actual, s.H, rtol=1e-6, atol=0)
            torch.testing.assert_close(s.C, s.H, rtol=1e-6, atol=0)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_from_manifest_replays_the_cached_calibration_set():
    from svdzoo.calibration import calibrate

    tok = build_byte_tokenizer()
    model = random_tiny("llama", layers=2)
    cached = calibrate(
        model, tok, corpus="pydoc", nsamples=3, seqlen=16, seed=5, batch_size=2, device="cpu",
        progress=False,
    )  # fmt: skip
    seq = SequentialCalibrator.from_manifest(
        model, tok, cached.manifest, device="cpu", progress=False
    )
    for i, _layer in seq.layers():
        for g, s in seq.layer_stats(i).items():
            assert torch.equal(s.H, cached.gram(i, g))


def test_from_manifest_refuses_another_text_under_the_corpus_name():
    """A cache computed on another version of its corpus (an edited file, another Python's
    pydoc topics) was replayed on the text there now: other windows, silently, so `H` was
    no longer the cached Gram."""
    from svdzoo.calibration import calibrate
    from svdzoo.errors import CacheError

    tok = build_byte_tokenizer()
    model = random_tiny("llama", layers=2)
    cached = calibrate(
        model, tok, corpus="pydoc", nsamples=2, seqlen=16, seed=5, device="cpu", progress=False
    )
    other = {**cached.manifest, "corpus_fingerprint": "0123456789abcdef"}
    with pytest.raises(CacheError, match="0123456789abcdef"):
        SequentialCalibrator.from_manifest(model, tok, other, device="cpu", progress=False)


def test_a_sequential_method_replays_the_same_windows_and_refuses_the_same_faults(tmp_path):
    """AdaSVD's and ResSVD's replay (`methods.sequential.replay_windows`) and
    `from_manifest` cut their windows through one function, `cache.cached_windows`: they
    had two copies of the corpus, fingerprint and prefix logic, one raising ConfigError."""
    from svdzoo.calibration import calibrate
    from svdzoo.calibration.cache import cached_windows
    from svdzoo.errors import CacheError, ConfigError
    from svdzoo.methods.sequential import replay_windows

    tok = build_byte_tokenizer()
    model = random_tiny("llama", layers=2)
    cached = calibrate(
        model, tok, corpus="pydoc", nsamples=3, seqlen=16, seed=5, device="cpu", progress=False
    )
    whole = cached_windows(cached.manifest, tok)
    assert whole.shape == (3, 16)
    assert torch.equal(replay_windows(cached.manifest, tok, {}), whole)
    assert torch.equal(replay_windows(cached.manifest, tok, {"seq_nsamples": 2}), whole[:2])
    other = {**cached.manifest, "corpus_fingerprint": "0123456789abcdef"}
    with pytest.raises(CacheError, match="0123456789abcdef"):
        replay_windows(other, tok, {})
    missing = str(tmp_path / "gone.txt")
    with pytest.raises(ConfigError, match=r"seq_nsamples must be in \[1, 3\]"):  # before the corpus
        replay_windows(cached.manifest, tok, {"seq_nsamples": 4, "calibration_corpus": missing})
    with pytest.raises(CacheError, match="calibration_corpus=PATH"):
        replay_windows(cached.manifest, tok, {"calibration_corpus": missing})
    with pytest.raises(CacheError, match=r"lacks \['seed'\]"):
        cached_windows({k: v for k, v in cached.manifest.items() if k != "seed"}, tok)


def test_custom_accumulator_sees_every_batch(windows):
    """A caller-supplied accumulator (e.g. stack-of-batch averaging) receives the token rows."""
    from svdzoo.calibration.stats import CrossGramAccumulator

    class Halved(CrossGramAccumulator):
        def add(self, x, x_actual):
            super().add(x * 0.5, None if x_actual is None else x_actual * 0.5)

    model = random_tiny("llama", layers=1)
    plain = SequentialCalibrator(model, windows, batch_size=2, device="cpu", progress=False)
    want = plain.layer_stats(0)
    plain.close()
    seq = SequentialCalibrator(
        model, windows, batch_size=2, device="cpu", progress=False, accumulator=Halved
    )
    got = seq.layer_stats(0)
    seq.close()
    for g in want:
        torch.testing.assert_close(got[g].H, 0.25 * want[g].H, rtol=1e-12, atol=0)
        assert got[g].count == want[g].count


def test_actual_stream_only_gives_the_same_actual_statistics(windows):
    """`original=False` (adaComp reads only H'): the compressed stream alone yields the
    H' the two-stream pass gives, with no original-stream statistics and no divergence."""
    noise = torch.Generator().manual_seed(2)
    model = random_tiny("llama", layers=3)
    twin = copy.deepcopy(model)
    both = SequentialCalibrator(twin, windows, batch_size=3, device="cpu", progress=False)
    one = SequentialCalibrator(
        model, windows, batch_size=3, device="cpu", progress=False, original=False
    )
    for (i, layer), (j, layer2) in zip(one.layers(), both.layers(), strict=True):
        assert i == j
        assert one.divergence() is None
        assert (both.divergence() > 0) == (i > 0)
        for g in adapter_for(model).groups:
            a, b = one.layer_stats(i, (g,))[g], both.layer_stats(j, (g,))[g]
            assert a.H is None and a.C is None and a.count == b.count
            assert torch.equal(a.H_actual, b.H_actual)
            delta = 0.3 * torch.randn(layer.mlp.up_proj.weight.shape, generator=noise)
            if g == "mlp_in":  # "compress" a linear between the groups, in both models
                with torch.no_grad():
                    layer.mlp.up_proj.weight.add_(delta)
                    layer2.mlp.up_proj.weight.add_(delta)


def test_the_model_gets_its_mode_back(windows):
    """The calibrator runs the model in eval mode and hands it back training when it came
    in training, once its layers are done (it used to leave it in eval mode)."""
    model = random_tiny("llama").train()
    seq = SequentialCalibrator(model, windows, batch_size=4, device="cpu", progress=False)
    assert not model.training
    for i, _layer in seq.layers():
        seq.layer_stats(i)
    assert model.training


def test_a_layer_left_mid_turn_goes_back_home(windows, monkeypatch):
    """A caller that fails during a layer's turn (or stops early) gets that layer back on
    the device it lived on; it used to stay on the accelerator. The home is faked as
    `meta` so the move is visible on a CPU-only machine."""
    import svdzoo.calibration.sequential as sequential

    model = random_tiny("llama").train()
    monkeypatch.setattr(sequential, "module_device", lambda _m: torch.device("meta"))
    seq = SequentialCalibrator(model, windows, batch_size=4, device="cpu", progress=False)
    with pytest.raises(RuntimeError, match="the method failed"):
        for i, _layer in seq.layers():
            seq.layer_stats(i)
            if i == 0:
                raise RuntimeError("the method failed")
    layers = adapter_for(model).layers(model)
    assert next(layers[0].parameters()).device.type == "meta"
    assert next(layers[1].parameters()).device.type == "cpu"  # never started
    assert model.training


def test_a_failed_capture_gives_the_mode_back():
    """The constructor's own failure (here: token ids outside the vocabulary) leaves the
    model in the mode it came in."""
    model = random_tiny("llama").train()
    bad = torch.full((2, 8), model.config.vocab_size + 5, dtype=torch.long)
    with pytest.raises(IndexError):
        SequentialCalibrator(model, bad, batch_size=2, device="cpu", progress=False)
    assert model.training


@pytest.mark.parametrize(
    "options",
    [
        {"seq_batch_size": 0},  # became the default 8
        {"mini_bsz": 2.5},  # truncated to 2
        {"seq_nsamples": 2.5},  # truncated to 2
        {"mini_bsz": True},  # read as 1 (off)
        {"seq_batch_size": "abc"},  # a bare ValueError
        {"seq_batch_size": "+-3"},  # passed the digit check, then int() raised ValueError
    ],
)
def test_a_sequential_option_that_is_no_whole_number_is_refused(options):
    """The sequential pass's integer options were read with `int(value or default)`."""
    from svdzoo.calibration import calibrate
    from svdzoo.compression import Statistics, compress
    from svdzoo.errors import ConfigError

    tok = build_byte_tokenizer()
    model = random_tiny("llama", layers=1)
    stats = calibrate(
        model, tok, corpus="pydoc", nsamples=4, seqlen=32, seed=0, device="cpu", progress=False
    )
    key = next(iter(options))
    with pytest.raises(ConfigError, match=f"{key} must be an integer"):
        compress(model, "adasvd-comp", 0.4, stats=Statistics(gram=stats), tokenizer=tok,
                 options=options)  # fmt: skip
    assert isinstance(model.model.layers[0].mlp.up_proj, torch.nn.Linear)
