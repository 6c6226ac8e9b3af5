"""benchmarks/bench_split_heldout.py: the Grams it captures from a model's own forward are
the ones `svdzoo calibrate` caches (so a compressed model's inputs are read the same way),
and its summary bins and counts the splits as the report says."""

from __future__ import annotations

import pandas as pd
import torch
from helpers import load_benchmark, random_tiny

from svdzoo.calibration.gram import calibrate
from svdzoo.tokenizer import save_byte_tokenizer


def test_captured_grams_are_the_calibration_cache_s(tmp_path):
    bench = load_benchmark("bench_split_heldout")
    model = random_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok = save_byte_tokenizer(tmp_path / "m")
    kw = dict(corpus="pydoc", nsamples=3, seqlen=16, seed=5)
    stats = calibrate(model, tok, **kw, progress=False)
    captured = bench.CapturedGrams(tmp_path / "m", "pydoc", 3, 16, 5)
    assert len(captured.grams) == stats.num_layers * len(stats.groups)
    for layer in range(stats.num_layers):
        for group in stats.groups:
            want = stats.gram(layer, group)
            torch.testing.assert_close(captured.gram(layer, group), want, rtol=1e-5, atol=1e-8)
    other = bench.CapturedGrams(tmp_path / "m", "pydoc", 3, 16, 6)  # other windows
    assert not torch.allclose(other.gram(0, stats.groups[0]), stats.gram(0, stats.groups[0]))


def test_summary_bins_by_calibration_gain_and_counts_held_out_losses():
    bench = load_benchmark("bench_split_heldout")
    df = pd.DataFrame(
        {
            "ratio": [0.8] * 4,
            "kept": [3, 2, 5, 0],
            "gain": [0.005, 0.02, 0.03, 0.0],
            "gain_heldout": [0.004, -0.01, 0.05, 0.0],
            "duo_kept": [0, 2, 5, 0],
        }
    )
    s = bench.summary(df).set_index("calibration gain")
    assert s.loc["0%-1%", "splits"] == 1 and s.loc["1%-5%", "splits"] == 2
    assert s.loc["1%-5%", "worse on held-out"] == 1 and s.loc["5%-10%", "splits"] == 0
    assert bench.check_recomputation(df) == 0
    df.loc[0, "duo_kept"] = 3  # duo-svd kept a split the 1 % threshold rejects: a mismatch
    assert bench.check_recomputation(df) == 1
