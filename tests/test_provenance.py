"""Statistics and compressed models are used only with what they were made from: a
sensitivity table of its own kind, Gram cache and code; a compressed directory with its
own config (each test failed on the code before its fix, from a bug hunt)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
from helpers import random_tiny  # noqa: E402

from svdzoo.calibration import calibrate_to_dir, load_stats  # noqa: E402
from svdzoo.calibration.cache import seal  # noqa: E402
from svdzoo.cli import main as cli_main  # noqa: E402
from svdzoo.codehash import recorded  # noqa: E402
from svdzoo.compression import Statistics, compress  # noqa: E402
from svdzoo.errors import CacheError  # noqa: E402
from svdzoo.models import load_model, load_tokenizer  # noqa: E402
from svdzoo.sensitivity import load_sensitivity, sensitivity_to_dir  # noqa: E402
from svdzoo.tokenizer import build_byte_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random tiny LLaMA saved with the byte tokenizer, its Gram cache and both tables."""
    root = tmp_path_factory.mktemp("hunt-cache")
    model_dir = root / "model"
    random_tiny("llama").save_pretrained(model_dir)
    build_byte_tokenizer().save_pretrained(model_dir)
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    gram_dir = root / "gram"
    calibrate_to_dir(
        model, tok, gram_dir, corpus="pydoc", nsamples=8, seqlen=32, seed=3, progress=False
    )
    gram = load_stats(gram_dir)
    tables = {}
    for kind in ("duo", "asvd"):
        tables[kind] = root / f"sensitivity-{kind}"
        sensitivity_to_dir(model, tok, gram, kind, tables[kind], nsamples=4, batch_size=4)
    return root, model_dir, gram_dir, tables


def _compress_duo(model, gram_dir, table):
    """Duo-SVD (one KL table) at 40 % with this Gram cache and this table as its duo table."""
    return compress(
        model,
        "duo-svd-independent",
        0.4,
        stats=Statistics(gram=load_stats(gram_dir), sensitivity={"duo": table}),
    )


def test_compress_refuses_a_sensitivity_table_of_the_other_kind(saved, tmp_path):
    """An ASVD perplexity table passed as --sensitivity-duo (or a KL table as
    --sensitivity-asvd) was taken as the other kind: Duo-SVD's knapsack ran on perplexities
    and ASVD's threshold on KL values ("ppl <= 0.0000"), and a compressed model was written."""
    _, model_dir, gram_dir, tables = saved
    for method, flag, wrong in (
        ("duo-svd-independent", "--sensitivity-duo", tables["asvd"]),
        ("asvd", "--sensitivity-asvd", tables["duo"]),
    ):
        out = tmp_path / method
        argv = ["compress", "--model", str(model_dir), "--method", method, "--ratio", "0.4",
                "--stats", str(gram_dir), flag, str(wrong), "--out", str(out),
                "--device", "cpu"]  # fmt: skip
        assert cli_main(argv) != 0, f"{method} accepted a table of the other kind"
        assert not out.exists()


def test_every_manifest_names_the_library_versions_it_was_made_with(saved):
    """Statistics, tables and compressed models record python, torch, transformers and the
    rest (`svdzoo.provenance`), so two runs of one code and params that disagree can be
    told apart: the default run's reference OPT came out different on two days, and its
    manifests recorded only svdzoo's version."""
    import platform

    import torch
    import transformers

    _, model_dir, gram_dir, tables = saved
    manifest = _compress_duo(load_model(model_dir), gram_dir, load_sensitivity(tables["duo"]))
    recorded = [
        json.loads((gram_dir / "manifest.json").read_text())["software"],
        load_sensitivity(tables["duo"]).manifest["software"],
        manifest["software"],
    ]
    for software in recorded:
        assert software["python"] == platform.python_version()
        assert software["torch"] == torch.__version__
        assert software["transformers"] == transformers.__version__
        assert {"scipy", "lm-eval"} <= software.keys(), software
        assert software["mkl_cbwr"] == os.environ["MKL_CBWR"]  # set by `import svdzoo`
        assert "cpu_lapack" not in software  # the default, scipy's, is not spelled out


def test_a_chosen_cpu_lapack_is_recorded(monkeypatch):
    """Duo-SVD's factors came out with other signs on torch's LAPACK (the same splits)."""
    from svdzoo.provenance import software

    monkeypatch.setenv("SVDZOO_CPU_LAPACK", "Torch ")
    assert software()["cpu_lapack"] == "torch"
    monkeypatch.setenv("SVDZOO_CPU_LAPACK", "")
    assert "cpu_lapack" not in software()


def test_compress_api_refuses_a_table_under_the_wrong_key(saved):
    _, model_dir, gram_dir, tables = saved
    model = load_model(model_dir)
    asvd = load_sensitivity(tables["asvd"])
    with pytest.raises(CacheError, match="asvd"):
        _compress_duo(model, gram_dir, asvd)


@pytest.mark.parametrize(
    "field, other",
    [("code", "0" * 16), ("precision", "float32")],
)
def test_sensitivity_cli_recomputes_a_table_of_other_code_or_precision(
    saved, tmp_path, field, other
):
    """`svdzoo sensitivity` keeps an existing table that "matches the request"; the match
    ignored the code hash and the probes' precision the manifest records, so a table made
    by older svdzoo code (before a fix of the probes), or on a GPU (float32 SVDs), was kept
    by this request: "nothing to do"."""
    _, model_dir, gram_dir, _ = saved
    out = tmp_path / "sens"
    argv = ["sensitivity", "--model", str(model_dir), "--stats", str(gram_dir), "--kind", "duo",
            "--nsamples", "4", "--ratios", "0.5", "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    assert cli_main(argv) == 0
    stamp = (out / "table.json").stat().st_mtime_ns
    assert cli_main(argv) == 0  # the same request, code and precision: kept
    assert (out / "table.json").stat().st_mtime_ns == stamp
    mpath = out / "manifest.json"
    manifest = json.loads(mpath.read_text())
    want = {"code": recorded("sensitivity"), "precision": "float64"}[field]  # a CPU's
    assert manifest[field] == want
    manifest[field] = other  # the same table as other code, or a GPU, would have written it
    mpath.write_text(json.dumps(seal(manifest), indent=2, sort_keys=True) + "\n")
    assert cli_main(argv) == 0
    assert load_sensitivity(out).manifest[field] == want


def test_compress_refuses_a_table_measured_with_another_gram_cache(saved, tmp_path):
    """A sensitivity table is measured with the whitening of one Gram cache and records that
    cache's sha256; compress checked only (corpus, seqlen, seed), so a table computed with
    the 8-window Gram was accepted beside a 16-window Gram of the same corpus/seqlen/seed
    (no --calibration tag given) and the compressed model's manifest named both."""
    _, model_dir, gram_dir, tables = saved
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    other = tmp_path / "gram16"
    calibrate_to_dir(
        model, tok, other, corpus="pydoc", nsamples=16, seqlen=32, seed=3, progress=False
    )
    table = load_sensitivity(tables["duo"])
    assert table.manifest["gram"]["sha256"] == load_stats(gram_dir).manifest["sha256"]
    with pytest.raises(CacheError, match="Gram"):
        _compress_duo(model, other, table)
    # the table's own Gram cache is accepted
    _compress_duo(model, gram_dir, table)


def test_compressed_model_with_an_edited_config_is_refused(saved, tmp_path):
    """The weights file is tied to the manifest by its sha256, but `config.json` was tied to
    nothing: a compressed directory whose config was replaced (here rope_theta and
    tie_word_embeddings, which change no shape) loaded without a word, as a different model
    (tied embeddings silently discard the saved lm_head)."""
    import torch

    from svdzoo.compression import load_compressed, save_compressed

    _, model_dir, gram_dir, _ = saved
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    manifest = compress(model, "svd-llm", 0.4, stats=Statistics(gram=load_stats(gram_dir)))
    out = tmp_path / "c"
    save_compressed(model, manifest, out, tok)
    ids = torch.arange(16).unsqueeze(0)
    want = load_compressed(out)(ids).logits
    config = json.loads((out / "config.json").read_text())
    config["rope_theta"] = 1.0
    config["tie_word_embeddings"] = True
    (out / "config.json").write_text(json.dumps(config, indent=2))
    try:
        got = load_compressed(out)(ids).logits
    except CacheError as exc:
        assert "config.json" in str(exc)
    else:
        raise AssertionError(
            f"an edited config.json was loaded (max logit change {(got - want).abs().max():.3g})"
        )
