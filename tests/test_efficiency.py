"""measure_efficiency: parameter accounting against a hand-made low-rank model; throughput."""

from __future__ import annotations

import pytest
from helpers import random_tiny
from torch import nn

from svdzoo.evaluation.efficiency import EfficiencyError, count_target_params, measure_efficiency
from svdzoo.models import adapter_for

# the decode loop passes the key-value cache under the name the installed transformers
# takes: the old name (`past_key_values`, renamed `cache` in transformers 5) warns
pytestmark = pytest.mark.filterwarnings("error:.*past_key_values.*:FutureWarning")


def _compress_by_hand(model, rank: int) -> dict:
    """Replace every target linear of layer 0 by a rank-`rank` pair; return a manifest
    with the parameter counts computed from shapes alone (not by walking the model)."""
    adapter = adapter_for(model)
    targets = list(adapter.iter_targets(model))
    dense_targets = sum(lin.in_features * lin.out_features for *_, lin in targets)
    model_dense = sum(p.numel() for p in model.parameters())
    compressed_targets = 0
    layer0 = adapter.layers(model)[0]
    for _full, layer_idx, target, lin in targets:
        m, n = lin.out_features, lin.in_features
        if layer_idx == 0:
            parent_name, _, attr = target.rpartition(".")
            pair = nn.Sequential(nn.Linear(n, rank, bias=False), nn.Linear(rank, m, bias=False))
            setattr(layer0.get_submodule(parent_name), attr, pair)
            compressed_targets += rank * (m + n)
        else:
            compressed_targets += m * n
    return {
        "params_dense": dense_targets,
        "params_compressed": compressed_targets,
        "model_params_dense": model_dense,
        "model_params_compressed": model_dense - dense_targets + compressed_targets,
        "compression_time_s": 1.5,
    }


def test_param_counts_match_manifest_and_throughput_positive() -> None:
    model = random_tiny("llama", max_position_embeddings=256)
    manifest = _compress_by_hand(model, rank=4)
    out = measure_efficiency(
        model, batch_sizes=(1, 3), prompt_len=16, gen_len=4, warmup=1, repeats=2, manifest=manifest
    )
    assert out["params_targets"] == manifest["params_compressed"]
    assert out["params_total"] == manifest["model_params_compressed"]
    assert out["params_total"] < manifest["model_params_dense"]
    assert out["weight_bytes"] == 4 * out["params_total"]  # float32
    assert out["peak_memory_bytes"] >= out["weight_bytes"]
    assert out["compression_time_s"] == 1.5
    assert [r["batch_size"] for r in out["throughput"]] == [1, 3]
    for row in out["throughput"]:
        assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0


def test_dense_model_counts_and_no_manifest() -> None:
    model = random_tiny("llama", max_position_embeddings=256)
    adapter = adapter_for(model)
    expected = sum(lin.weight.numel() for *_, lin in adapter.iter_targets(model))
    assert count_target_params(model) == expected
    out = measure_efficiency(model, batch_sizes=(2,), prompt_len=8, gen_len=2, repeats=1)
    assert out["compression_time_s"] is None
    # tied input/output embeddings are counted once
    assert out["params_total"] == sum(p.numel() for p in model.parameters())


def test_bad_arguments_fail_before_compute() -> None:
    model = random_tiny("llama", max_position_embeddings=256)
    with pytest.raises(EfficiencyError, match="max_position_embeddings"):
        measure_efficiency(model, prompt_len=250, gen_len=32)
    with pytest.raises(EfficiencyError, match="batch sizes"):
        measure_efficiency(model, batch_sizes=(0,))


def test_the_prefill_computes_the_last_positions_logits_only() -> None:
    """As `generate` does (`logits_to_keep=1`): the LM head over all 16 prompt positions was
    time and memory of the uncompressed head in every model's measurement."""
    model = random_tiny("llama", max_position_embeddings=256)
    positions = []
    hook = model.lm_head.register_forward_hook(lambda m, i, out: positions.append(out.shape[1]))
    try:
        out = measure_efficiency(model, batch_sizes=(2,), prompt_len=16, gen_len=3, repeats=1)
    finally:
        hook.remove()
    assert positions and set(positions) == {1}
    assert out["prefill_logits"] == "last"
