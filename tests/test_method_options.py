"""Every documented `--option` changes what a method does, and an option a method does not
take is refused before any compute (it used to be recorded in the manifest and ignored)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import load_calibrated

from svdzoo.compression import Statistics, compress
from svdzoo.errors import ConfigError
from svdzoo.methods import get_method
from svdzoo.methods.base import accepted_options

CALIB = dict(corpus="pydoc", nsamples=16, seqlen=64, seed=3)
SEQ = {"seq_nsamples": 4}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_calibrated(tiny_llama_dir, progress=False, **CALIB)


def _run(llama, method, ratio, options):
    model, tok, stats = llama
    m = copy.deepcopy(model)
    man = compress(m, method, ratio, stats=Statistics(gram=stats), tokenizer=tok, options=options)
    weights = {n: p.detach().clone() for n, p in m.named_parameters()}
    return man, weights


# (method, ratio, option, value): one row per documented option of each method
CASES = [
    ("svd", 0.4, "precision", "float32"),
    ("asvd-uniform", 0.4, "alpha", 1.0),
    ("svd-llm", 0.4, "whitening", "eigen"),
    ("svd-llm", 0.4, "precision", "float32"),
    ("svd-llm-v2", 0.4, "rmax", 0.42),
    ("duo-svd-columns", 0.4, "accept", 0.9),
    ("duo-svd-columns", 0.4, "search", "ritz"),
    ("duo-svd-columns", 0.4, "schedule", "rounded"),
    ("adasvd-comp", 0.4, "tau", 0),
    ("adasvd-cr", 0.4, "mrr_fraction", 0.0),
    ("adasvd-cr", 0.4, "mrr", 0.1),
    ("ressvd-residual", 0.4, "beta", 0.3),
    ("ressvd-lastk", 0.4, "K", 2),
    ("ressvd-compensated-residual", 0.4, "k1_fraction", 0.9),
    ("ressvd-compensated", 0.3, "max_ratio", 0.5),
]


@pytest.mark.parametrize("method,ratio,option,value", CASES)
def test_each_documented_option_changes_the_result(llama, method, ratio, option, value):
    extra = SEQ if get_method(method).sequential else {}
    assert option in accepted_options(get_method(method))
    base_man, base = _run(llama, method, ratio, extra)
    man, got = _run(llama, method, ratio, {**extra, option: value})
    assert man["options"][option] == value
    ranks = {n: r["rank"] for n, r in man["modules"].items()}
    base_ranks = {n: r["rank"] for n, r in base_man["modules"].items()}
    changed = ranks != base_ranks or set(got) != set(base)
    changed = changed or any(not torch.equal(got[n], base[n]) for n in base)
    assert changed, f"{method}: option {option}={value!r} changed nothing"


@pytest.mark.parametrize(
    "method,options",
    [
        ("svd-llm", {"alpha": 0.5}),
        ("svd", {"tau": 1}),
        ("adasvd", {"nope": 1}),
        ("ressvd", {"seq_nsamples": 4}),
        # Duo-SVD's split always factorises in float64 and its allocators read no spectra:
        # `precision` (once accepted from an unused spectrum part) would change nothing
        ("duo-svd-columns", {"precision": "float32"}),
        ("svdzoo-duo-ada", {"precision": "float32"}),
    ],  # fmt: skip
)
def test_an_option_the_method_does_not_take_is_refused_before_compute(llama, method, options):
    model, tok, stats = llama
    m = copy.deepcopy(model)
    with pytest.raises(ConfigError, match="takes no option"):
        compress(m, method, 0.4, stats=Statistics(gram=stats), tokenizer=tok, options=options)
    assert all(
        isinstance(mod, torch.nn.Linear) for n, mod in m.named_modules() if n.endswith("proj")
    )


@pytest.mark.parametrize(
    "method,options,match",
    [
        ("svd-llm", {"precision": "float16"}, "precision"),
        ("duo-svd-columns", {"search": "fast"}, "search"),
        ("duo-svd-columns", {"oversample": -1}, "oversample"),
        ("duo-svd-columns", {"schedule": "brent"}, "schedule"),
        ("duo-svd-columns", {"probes": "float16"}, "probes"),
        # values of the wrong kind: these failed inside the compression, after the model
        # had loaded (`alpha=abc` in torch.pow), or as a bare ValueError
        ("asvd-uniform", {"alpha": "abc"}, "'alpha' must be a number"),
        ("ressvd-residual", {"beta": "abc"}, "'beta' must be a number"),
        ("ressvd", {"K": "abc"}, "'K' must be an integer"),
        ("svd-llm-v2", {"rmax": "abc"}, "'rmax' must be a number"),
        ("adasvd-cr", {"mrr": "abc"}, "'mrr' must be a number"),
        ("adasvd", {"tau": 1.5}, "'tau' must be an integer"),
        ("svdzoo-duo-ada", {"columns": "yes"}, "'columns' must be true or false"),
        # values out of range: accepted, then failed late or quietly did something else
        ("svd-llm-v2", {"rmax": -1}, r"'rmax' must be in \(0, 1\], got -1"),
        ("svd-llm-v2", {"loss_tokens": 0}, r"'loss_tokens' must be in \[1, inf\), got 0"),
        ("svd-llm-v2-allocation", {"loss_tokens": 2.5}, "'loss_tokens' must be an integer"),
        ("asvd-uniform", {"alpha": -3}, r"'alpha' must be in \[0, inf\), got -3"),
        ("asvd-uniform", {"alpha": float("nan")}, "'alpha' must be in"),
        ("adasvd-cr", {"mrr": 1.5}, r"'mrr' must be in \[0, 1\)"),
        ("adasvd-cr", {"mrr_fraction": -0.1}, "'mrr_fraction' must be in"),
        ("duo-svd-allocation", {"min_retained": 2.0}, r"'min_retained' must be in \[0, 1\]"),
        ("duo-svd-allocation", {"resolution": 0}, r"'resolution' must be in \[1, inf\)"),
        ("duo-svd-allocation", {"base": 0.0}, r"'base' must be in \(0, 1\]"),
        ("duo-svd-columns", {"accept": -0.5}, "'accept' must be in"),
        ("ressvd", {"K": 0}, "'K' must be in"),
        ("svd", {"precision": "bf16"}, "precision must be one of"),
        ("ressvd", {"step": 0}, "'step' must be in"),
        ("ressvd-lastk", {"max_ratio": 1.0}, r"'max_ratio' must be in \(0, 1\)"),
        ("svdzoo-kl-ada", {"accept": float("inf")}, "'accept' must be in"),
        # an option every part that takes it would ignore: eigen whitening never falls back
        ("svd-llm-v2", {"fallback": "raise"}, "'fallback' would do nothing here: eigen"),
        ("svd-llm-v2-truncation", {"fallback": "diag-damp"}, "'fallback' would do nothing"),
        ("duo-svd-columns", {"whitening": "eigen", "fallback": "raise"}, "'fallback' would do"),
        # accepted, recorded and ignored: two manifests, one model (a review found them)
        ("svdzoo-kl-ada", {"columns": False, "accept": 0.5}, "'accept' would do nothing"),
        (
            "adasvd-compensated-comp",
            {"start": "whitened", "whitening": "cholesky"},
            "'whitening' would do nothing here: the whitened start",
        ),
        ("ressvd", {"K": 3, "step": 2}, "'step' would do nothing here: a fixed K"),
        ("ressvd", {"K": 3, "search_nsamples": 4}, "'search_nsamples' would do nothing"),
        # no value (`--option rmax=`, `min_retained: null`): float(None) once the model loaded
        ("svd-llm-v2", {"rmax": None}, "'rmax' has no value"),
        ("adasvd-cr", {"mrr_fraction": None}, "'mrr_fraction' has no value"),
        ("duo-svd-independent", {"min_retained": None}, "'min_retained' has no value"),
    ],
)
def test_a_bad_option_value_is_refused_before_compute(llama, method, options, match):
    model, tok, stats = llama
    m = copy.deepcopy(model)
    with pytest.raises(ConfigError, match=match):
        compress(m, method, 0.4, stats=Statistics(gram=stats), tokenizer=tok, options=options)
    assert all(
        isinstance(mod, torch.nn.Linear) for n, mod in m.named_modules() if n.endswith("proj")
    )


def test_svd_llm_fp32_records_its_float32_arithmetic(llama):
    """It recorded float64, the manifest's default for a part naming no precision."""
    man, _ = _run(llama, "svd-llm-fp32", 0.4, {})
    assert man["precision"] == "float32"


def test_option_kinds_read_real_annotations_too():
    """A plugin's dataclass without `from __future__ import annotations` has types, not
    strings, as annotations: `damp=abc` was not checked and failed after the model loaded."""
    import dataclasses

    from svdzoo.methods.base import Method, check_options, option_kinds
    from svdzoo.methods.parts import Uniform

    source = (
        "import dataclasses\n"
        "@dataclasses.dataclass(frozen=True)\n"
        "class Damped:\n"
        "    damp: float = 0.1\n"
        "    steps: int | None = None\n"
        "    def __call__(self, ctx, rank):\n"
        "        raise AssertionError\n"
    )
    namespace: dict = {}  # compiled without the future import this file has
    exec(compile(source, "plugin", "exec", dont_inherit=True), namespace)
    part = namespace["Damped"]()
    assert not isinstance(dataclasses.fields(part)[0].type, str)
    method = Method("x", "", "", frozenset(), factoriser=part, allocator=Uniform())
    assert option_kinds(method) == {"damp": "a number", "steps": "an integer"}
    with pytest.raises(ConfigError, match="'damp' must be a number"):
        check_options(method, {"damp": "abc"})


@pytest.mark.parametrize("method", ["svd-llm", "svd"])
def test_the_manifest_records_the_factorisation_precision(llama, method):
    base_man, base = _run(llama, method, 0.4, {})
    assert base_man["precision"] == "float64"
    man, _ = _run(llama, method, 0.4, {"precision": "float32"})
    assert man["precision"] == "float32" and man["options"]["precision"] == "float32"
    # the GPU default, run here on a CPU: the same compressed model to float32's rounding
    # of the weights' product (the factors' balance may differ, their product may not)
    man, got = _run(llama, method, 0.4, {"precision": "float64-eigh"})
    assert man["precision"] == "float64-eigh"
    assert man["modules"] == base_man["modules"]
    stems = [n[: -len(".A.weight")] for n in base if n.endswith(".A.weight")]
    assert stems  # the model was factored
    for name in base:
        if name.endswith(".A.weight"):
            stem = name[: -len(".A.weight")]
            want = base[f"{stem}.A.weight"].double() @ base[f"{stem}.B.weight"].double()
            have = got[f"{stem}.A.weight"].double() @ got[f"{stem}.B.weight"].double()
            assert torch.allclose(have, want, rtol=0, atol=1e-5 * float(want.abs().max())), stem


def test_a_malformed_option_value_is_named_not_a_traceback():
    from svdzoo.commands.compress import parse_options

    with pytest.raises(ConfigError, match=r"--option foo: '\[1' is not a valid YAML value"):
        parse_options(["foo=[1"])
    assert parse_options(["alpha=0.5", "columns=true"]) == {"alpha": 0.5, "columns": True}


@pytest.mark.parametrize(
    "method,options",
    [
        ("svd-llm-v2", {"whitening": "cholesky", "fallback": "raise"}),  # Cholesky's again
        ("adasvd-cr", {"fallback": "raise"}),  # its factoriser is Cholesky, its spectra eigen
        ("svd-llm", {"fallback": "diag-damp"}),
        ("duo-svd-columns", {"fallback": "raise"}),
    ],
)
def test_fallback_is_taken_where_a_cholesky_whitening_uses_it(method, options):
    from svdzoo.methods import get_method
    from svdzoo.methods.base import check_options, inert_options

    check_options(get_method(method), options)
    assert inert_options(get_method(method), options) == {}


def test_the_listing_marks_an_option_its_parts_ignore_as_registered(capsys):
    """`svdzoo methods --options` listed `fallback` for svd-llm-v2, which refuses it alone."""
    from svdzoo.cli import main

    assert main(["methods", "--options"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {
        lines[i].split()[0]: lines[i + 1].split("options:", 1)[1]
        for i in range(len(lines) - 1)
        if "options:" in lines[i + 1] and not lines[i].startswith(" ")
    }
    assert "fallback (with whitening=cholesky)" in listed["svd-llm-v2"]
    assert "fallback (with" not in listed["adasvd-cr"] and "fallback" in listed["adasvd-cr"]
    assert "fallback (with" not in listed["svd-llm"]
