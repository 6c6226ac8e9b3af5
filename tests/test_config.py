"""params.yaml validation: every config in the repository is valid, and each kind of bad
input fails before any compute with a message naming the offending key."""

from __future__ import annotations

import copy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from svdzoo import config as C
from svdzoo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / C.SCHEMA_RELPATH
CONFIGS = sorted((ROOT / "workflow" / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def default() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _fails(params: dict, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        C.validate_params(params, SCHEMA)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in error message: {msg}"
    return msg


def test_default_params_valid_and_complete(default):
    p = C.validate_params(default, SCHEMA)
    assert set(p["models"]) == {"smollm2-135m", "ref-opt"}
    assert p["models"]["smollm2-135m"]["source"] == "pypi"
    assert C.local_models(p) == ["smollm2-135m", "ref-opt"]
    assert p["methods"] == [
        "svd",
        "fwsvd",
        "asvd",
        "svd-llm",
        "svd-llm-v2",
        "adasvd",
        "ressvd",
        "duo-svd-independent",
    ]
    assert C.ratios(p) == [0.2, 0.4, 0.6, 0.8]
    assert set(p["evaluation"]["corpora"]) == {"pydoc", "pysource"}
    assert C.uses_offline_tasks(p)
    assert C.calib_tag(p) == "pydoc-n32-l256-s3"
    # defaults filled in for the optional sections
    assert p["keep_compressed"] is True and "published" in p["report"]
    assert C.needed_stats(p) == set(C.STATS_KINDS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_repository_configs_valid(path):
    p = C.load_params(path, SCHEMA)
    assert p["methods"] and p["ratios"]


def test_base_params_are_overlaid_and_cycles_refused(tmp_path):
    """Issue 14.6: paper configs share workflow/configs/base/paper.yaml; a file overlays its
    base key by key (mappings merge, lists and values replace)."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text(
        "ratios: ['0.20']\ncalibration: {corpus: pydoc, nsamples: 4, seed: 1}\n"
    )
    (tmp_path / "a.yaml").write_text(
        "base: sub/b.yaml\nratios: ['0.40']\ncalibration: {nsamples: 8}\n"
    )
    got = C.read_params(tmp_path / "a.yaml")
    assert got == {"ratios": ["0.40"], "calibration": {"corpus": "pydoc", "nsamples": 8, "seed": 1}}
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        C.read_params(tmp_path / "a.yaml")
    # every paper config overlays the shared base; DVC's check refuses a base
    paper = ROOT / "workflow" / "configs" / "paper-llama-7b.yaml"
    assert "base" in yaml.safe_load(paper.read_text())
    from svdzoo import cli

    assert cli.main(["validate-params", str(paper), "-q"]) == 0
    stamp = tmp_path / "stamp"
    assert cli.main(["validate-params", str(paper), "-q", "--stamp", str(stamp)]) == 2
    assert not stamp.exists()


def test_paper_configs_cover_the_papers():
    papers = {p.name: C.load_params(p, SCHEMA) for p in CONFIGS if p.name.startswith("paper-")}
    ids = {s["id"] for p in papers.values() for s in p["models"].values()}
    assert ids >= {
        "huggyllama/llama-7b",
        "meta-llama/Llama-2-7b-hf",
        "facebook/opt-6.7b",
        "mistralai/Mistral-7B-v0.1",
    }
    for name, p in papers.items():
        assert C.calib_tag(p) == "wikitext2-n256-l2048-s3", name
        assert p["evaluation"]["corpora"] == ["wikitext2", "ptb", "c4"], name
        assert set(p["evaluation"]["tasks"]) == set(C.PAPER_TASKS), name
        assert p["keep_compressed"] is False, name
        assert C.resources(p, "compress")["gpu"] == 1, name


def test_unknown_method(default):
    bad = copy.deepcopy(default)
    bad["methods"] = ["svd", "svd-lm"]
    _fails(bad, "methods[1]", "unknown method 'svd-lm'")


def test_method_options_are_checked_per_method(default):
    """`method_options` names a registered method, options it takes and values its parts
    accept; anything else fails at parse time, naming the key. A method left out of
    `methods` keeps its settings (a trimmed run stays valid)."""
    ok = copy.deepcopy(default)
    ok["method_options"] = {"duo-svd-independent": {"schedule": "golden", "accept": 0.02}}
    C.validate_params(ok, SCHEMA)
    C.validate_params({**ok, "methods": ["svd"]}, SCHEMA)
    flags = C.option_flags(ok, "duo-svd-independent")
    assert flags == ["--option", "schedule=golden", "--option", "accept=0.02"]
    assert C.option_flags(ok, "svd") == []
    for options, fragments in [
        ({"svd-llm-v3": {"precision": "float32"}}, ["method_options.svd-llm-v3", "unknown method"]),
        ({"svd-llm": {"schedule": "golden"}}, ["method_options.svd-llm", "no option 'schedule'"]),
        ({"duo-svd-independent": {"schedule": "brent"}}, ["method_options.duo-svd-independent",
                                                          "schedule"]),
        ({"svd-llm": {"precision": "float 32"}}, ["method_options"]),  # no shell words
        ({"svd-llm": {"precision": ["float32"]}}, ["method_options"]),  # scalars only
        # a value of the wrong kind used to pass here and fail in the compress job
        ({"asvd": {"alpha": "abc"}}, ["method_options.asvd", "'alpha' must be a number"]),
        ({"ressvd": {"K": "abc"}}, ["method_options.ressvd", "'K' must be an integer"]),
        ({"adasvd": {"tau": 1.5}}, ["method_options.adasvd", "'tau' must be an integer"]),
    ]:  # fmt: skip
        bad = copy.deepcopy(default)
        bad["method_options"] = options
        _fails(bad, *fragments)
    assert C.option_value(True) == "true" and yaml.safe_load(C.option_value(0.02)) == 0.02


def test_unknown_model_family_and_source(default):
    bad = copy.deepcopy(default)
    bad["models"]["ref-opt"]["family"] = "gpt2"
    _fails(bad, "models.ref-opt.family", "unknown model family 'gpt2'")
    bad = copy.deepcopy(default)
    bad["models"]["ref-opt"]["source"] = "s3"
    _fails(bad, "models.ref-opt.source")


def test_unknown_corpus(default):
    bad = copy.deepcopy(default)
    bad["evaluation"]["corpora"] = ["pydoc", "wikitext3"]
    _fails(bad, "evaluation.corpora[1]", "unknown corpus 'wikitext3'")
    bad = copy.deepcopy(default)
    bad["calibration"]["corpus"] = "nope"
    _fails(bad, "calibration.corpus")


def test_unknown_task(default):
    bad = copy.deepcopy(default)
    bad["evaluation"]["tasks"] = ["pydoc_continuation", "arc_medium"]
    _fails(bad, "evaluation.tasks[1]", "unknown task 'arc_medium'")


@pytest.mark.parametrize("ratio", ["0.00", "1.00", "1.20"])
def test_ratio_outside_open_interval(default, ratio):
    bad = copy.deepcopy(default)
    bad["ratios"] = ["0.40", ratio]
    _fails(bad, "ratios[1]", "outside (0, 1)")


def test_unquoted_ratio_is_explained(default):
    bad = copy.deepcopy(default)
    bad["ratios"] = [0.4]
    _fails(bad, "ratios[0]", "two-decimal string")


@pytest.mark.parametrize("key", ["methods", "ratios", "evaluation.corpora", "evaluation.tasks"])
def test_empty_list(default, key):
    bad = copy.deepcopy(default)
    node = bad
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = []
    _fails(bad, key, "should be non-empty")


def test_empty_models(default):
    bad = copy.deepcopy(default)
    bad["models"] = {}
    _fails(bad, "models")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("calibration.nsamples", "many"),
        ("models.ref-opt.steps", 1.5),
        ("keep_compressed", "yes"),
        ("methods", "svd"),
    ],
)
def test_wrong_type(default, key, value):
    bad = copy.deepcopy(default)
    node = bad
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    _fails(bad, key, "is not of type")


def test_unknown_key_and_missing_key(default):
    bad = copy.deepcopy(default)
    bad["ratio"] = ["0.40"]
    _fails(bad, "unknown key", "ratio")
    bad = copy.deepcopy(default)
    del bad["calibration"]["seed"]
    _fails(bad, "calibration", "'seed' is a required property")


@pytest.mark.parametrize(
    ("section", "key", "hint"),
    [
        ("evaluation", "max_windows", "max-windows"),
        ("calibration", "nsample", "nsamples"),
        ("sensitivity", "batch_size", "batch-size"),
        ("offline_tasks", "n_examples", "n-examples"),
        ("compress", "devise", "device"),
    ],
)
def test_flag_section_typo_names_the_option(default, section, key, hint):
    """Each flag section is checked against its command's real options, before any job."""
    bad = copy.deepcopy(default)
    bad.setdefault(section, {})[key] = 1
    _fails(bad, f"{section}.{key}", f"did you mean '{hint}'")


@pytest.mark.parametrize(
    ("section", "key", "command"),
    [
        ("calibration", "batch-size", "calibrate"),
        ("calibration", "memory-budget-mb", "calibrate"),
        ("compress", "device", "compress"),
        ("evaluation", "batch-size", "evaluate"),
        ("sensitivity", "max-tokens", "sensitivity"),
    ],
)
def test_execution_only_flag_in_a_cache_section_is_refused(default, section, key, command):
    """Case 10: such a flag would enter the cache's identity and rerun it when changed."""
    bad = copy.deepcopy(default)
    bad.setdefault(section, {})[key] = 1
    _fails(bad, f"{section}.{key}", f"move it to execution.{command}")


def test_execution_section_takes_only_execution_flags(default):
    good = copy.deepcopy(default)
    good["execution"] = {"calibrate": {"batch-size": 2, "device": "cpu"}}
    C.validate_params(good)
    bad = copy.deepcopy(default)
    bad["execution"] = {"compress": {"dtype": "float16"}}
    _fails(bad, "execution.compress.dtype", "not an execution-only flag")
    bad["execution"] = {"report": {"device": "cpu"}}
    _fails(bad, "execution", "report")


def test_execution_flags_reach_the_command_and_the_command_line_wins(tmp_path):
    """`svdzoo --execution FILE CMD`: the file's execution.CMD flags go in before the
    command's own, so an explicit flag overrides them."""
    from svdzoo.cli import build_parser, with_execution

    f = tmp_path / "p.yaml"
    f.write_text("execution:\n  calibrate:\n    batch-size: 3\n    device: cpu\n")
    flags = C.execution_flags(f, "calibrate")
    assert flags == ["--batch-size", "3", "--device", "cpu"]
    assert C.execution_flags(f, "evaluate") == []
    parser = build_parser()
    base = ["--execution", str(f), "calibrate", "--model", "m", "--out", "o", "--corpus", "pydoc"]
    base += ["--nsamples", "2", "--seqlen", "8", "--seed", "0"]
    args = parser.parse_args(with_execution(base, "calibrate", flags))
    assert (args.batch_size, args.device) == (3, "cpu")
    args = parser.parse_args(with_execution([*base, "--batch-size", "5"], "calibrate", flags))
    assert args.batch_size == 5
    f.write_text("execution:\n  calibrate:\n    seed: 1\n")
    with pytest.raises(ConfigError, match="execution.calibrate.seed"):
        C.execution_flags(f, "calibrate")
    # an empty value would reach the command as "None" (an offload dir named None)
    f.write_text("execution:\n  calibrate:\n    offload-dir:\n")
    with pytest.raises(ConfigError, match="execution.calibrate.offload-dir: empty"):
        C.execution_flags(f, "calibrate")


@pytest.mark.parametrize(
    "value, match",
    [
        ("[cpu, --force]", "takes one value, not a list"),
        ('"--force"', "would be read as a flag"),
    ],
)
def test_an_execution_value_cannot_smuggle_in_a_flag(tmp_path, value, match):
    """`svdzoo --execution FILE compress` alone: `device: [cpu, --force]` became the words
    `--device cpu --force`, and the user's directory at --out was replaced without their
    asking for --force. Each value is checked against its flag, as validate-params does."""
    f = tmp_path / "p.yaml"
    f.write_text(f"execution:\n  compress:\n    device: {value}\n")
    with pytest.raises(ConfigError, match=f"execution.compress.device: .*{match}"):
        C.execution_flags(f, "compress")
    f.write_text("execution:\n  compress:\n    device: cpu\n")
    assert C.execution_flags(f, "compress") == ["--device", "cpu"]


@pytest.mark.parametrize(
    "body,match",
    [
        ("execution: [1, 2]\n", "`execution` must map commands"),
        ("execution: 5\n", "`execution` must map commands"),
        ("execution:\n  calibrate: [device]\n", "execution.calibrate must map flags"),
        ("execution:\n  calibrate: cpu\n", "execution.calibrate must map flags"),
    ],
)
def test_an_execution_section_of_the_wrong_shape_is_one_error(tmp_path, body, match):
    """`svdzoo --execution FILE` alone (no validate-params before it): a list or a number
    was an AttributeError or TypeError, and `calibrate: cpu` was read letter by letter."""
    f = tmp_path / "p.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=match):
        C.execution_flags(f, "calibrate")


def test_a_llama_reference_with_an_odd_head_size_is_refused(default):
    """hidden 6 / heads 2: validate-params passed it, and training crashed inside
    transformers' rotary embedding (`size of tensor a (3) must match ... (4)`)."""
    bad = copy.deepcopy(default)
    ref = next(k for k, v in bad["models"].items() if v["source"] == "reference")
    bad["models"][ref].update(family="llama")
    bad["models"][ref]["options"] = {"hidden": 6, "heads": 2, "kv-heads": 1}
    _fails(bad, f"models.{ref}.options", "must be even")
    bad["models"][ref]["options"] = {"hidden": 8, "heads": 2, "kv-heads": 1}
    C.validate_params(bad, SCHEMA)


@pytest.mark.parametrize("section", ["calibration", "evaluation"])
def test_a_seqlen_a_reference_model_cannot_take_is_refused(default, section):
    """Found by `svdzoo calibrate` only after the model was trained."""
    bad = copy.deepcopy(default)
    ref = next(k for k, v in bad["models"].items() if v["source"] == "reference")
    bad[section]["seqlen"] = 4096
    _fails(bad, f"{section}.seqlen 4096", f"{ref!r} takes")


def test_reference_option_typo_is_refused(default):
    bad = copy.deepcopy(default)
    ref = next(k for k, v in bad["models"].items() if v["source"] == "reference")
    bad["models"][ref]["options"]["seq_len"] = 256
    _fails(bad, f"models.{ref}.options.seq_len", "train-reference")


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("heads", 0, "heads must be positive"),
        ("lr", "nan", "lr must be a positive finite number"),
        ("hidden", 90, "divisible by heads"),
        ("batch", "many", "'many' is not a valid int"),
    ],
)
def test_reference_option_values_are_checked_before_any_job(default, key, value, fragment):
    """A reference model's training options are checked as `prepare-model` checks them
    (the same `TrainConfig`), by `validate-params` rather than at job time."""
    bad = copy.deepcopy(default)
    ref = next(k for k, v in bad["models"].items() if v["source"] == "reference")
    bad["models"][ref]["options"] = {**(bad["models"][ref].get("options") or {}), key: value}
    _fails(bad, f"models.{ref}.options", fragment)


def test_a_published_name_on_a_trained_model_is_refused(default):
    """No paper reports a model this workflow trains, and the name would only make the
    prepare-model line change (retraining it in either engine)."""
    bad = copy.deepcopy(default)
    ref = next(k for k, v in bad["models"].items() if v["source"] == "reference")
    bad["models"][ref]["published_name"] = "LLaMA-7B"
    _fails(bad, f"models.{ref}", "published_name")
    ok = copy.deepcopy(default)
    pypi = next(k for k, v in ok["models"].items() if v["source"] == "pypi")
    ok["models"][pypi]["published_name"] = "SmolLM2-135M"
    C.validate_params(ok, SCHEMA)


def test_sensitivity_samples_bounded_by_calibration(default):
    bad = copy.deepcopy(default)
    bad["sensitivity"]["nsamples"] = bad["calibration"]["nsamples"] + 1
    _fails(bad, "sensitivity.nsamples")


def test_method_requirements_match_registry():
    from svdzoo.methods import requirements

    assert C.method_requirements("svd") == frozenset()
    for name in ("svd", "fwsvd", "asvd", "svd-llm"):
        assert C.method_requirements(name) == requirements(name)
    with pytest.raises(ConfigError, match="unknown method"):
        C.method_requirements("nope")


def test_cli_flags_are_dvc_expansion():
    """The Snakefile's command lines equal dvc.yaml's `${section}` expansion, and the
    commands read lists in that form."""
    from dvc.parsing.interpolate import to_str

    from svdzoo.cli import build_parser

    flags = {
        "corpora": ["pydoc", "pysource"],
        "tasks": ["pydoc_continuation"],
        "seqlen": 64,
        "flag": True,
        "off": False,
        "rate": 0.1,
    }
    assert C.cli_flags(flags) == to_str(flags).split()
    # a value with a space or a shell character stays one argument in both engines
    spaced = {"corpus": "my corpus.txt", "corpora": ["a b", "c;d"], "seqlen": 64}
    assert C.cli_line(spaced) == to_str(spaced)
    assert shlex.split(C.cli_line(spaced)) == C.cli_flags(spaced)
    assert C.cli_flags({"flag": True, "off": False}) == ["--flag"]
    evaluation = {"corpora": ["pydoc", "pysource"], "tasks": ["pydoc_continuation"]}
    args = build_parser().parse_args(
        ["evaluate", "--model", "m", "--ppl-out", "p.json", *C.cli_flags(evaluation)]
    )
    assert args.corpora == ["pydoc", "pysource"] and args.tasks == ["pydoc_continuation"]


def test_sensitivity_grid_must_reach_the_largest_ratio(default):
    bad = copy.deepcopy(default)
    bad["sensitivity"]["ratios"] = [0.4, 0.6, 0.8]
    _fails(bad, "sensitivity.ratios", "cannot reach the largest compression ratio (0.80)")


def test_validate_params_command(tmp_path, default):
    cmd = [sys.executable, "-m", "svdzoo.cli", "validate-params"]
    ok = subprocess.run([*cmd, str(ROOT / "params.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout and "64 compressed models" in ok.stdout
    bad = copy.deepcopy(default)
    bad["ratios"] = ["0.40", "1.50"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(bad))
    res = subprocess.run([*cmd, str(path), "--schema", str(SCHEMA)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "ratios[1]" in res.stderr and "Traceback" not in res.stderr


CHECK_WITHOUT_TORCH = """
import sys
from svdzoo import codehash, config
from svdzoo.cli import build_parser
from svdzoo.methods import REGISTRY
from svdzoo.paths import Layout
build_parser()
for path in sys.argv[1:]:
    p = config.load_params(path)  # the names, method options and flag sections included
    config.needed_stats(p), config.local_models(p), config.calib_tag(p)
assert len(REGISTRY) > 10, sorted(REGISTRY)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "numpy"))
print("LOADED", loaded[:5])
"""


def test_checking_params_does_not_import_torch():
    """What a Snakemake parse, `validate-params` and the report do with params.yaml (load and
    check it against the method registry) runs without torch, ~3 s of every such process:
    the registry's modules take it from `svdzoo.lazy`."""
    paths = [str(ROOT / "params.yaml"), *map(str, CONFIGS)]
    res = subprocess.run(
        [sys.executable, "-c", CHECK_WITHOUT_TORCH, *paths], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "LOADED []" in res.stdout, res.stdout


def test_a_lazy_module_imports_on_first_use_and_keeps_what_it_read():
    from svdzoo.lazy import LazyModule

    lazy = LazyModule("svdzoo._not_a_module")
    assert "svdzoo._not_a_module" in repr(lazy)
    with pytest.raises(AttributeError):
        getattr(lazy, "__wrapped__")  # noqa: B009 (introspection probes import nothing)
    with pytest.raises(ModuleNotFoundError):
        getattr(lazy, "anything")  # noqa: B009 (a missing module fails where it is used)
    json_ = LazyModule("json")
    assert json_.dumps([1]) == "[1]" and "dumps" in vars(json_)


def test_unreadable_params_and_schema_files_are_named_not_tracebacks(tmp_path, capsys):
    """A params file that is not UTF-8, and a `--schema` that is missing, a directory, not
    JSON or not a schema, each fail with one line naming the file (they were tracebacks).
    In this process (test_validate_params_command runs the real command): an exception
    that escaped `main` fails the test as a traceback would."""
    from svdzoo.cli import main

    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "bad.json").write_text("{bad")
    params = str(ROOT / "params.yaml")
    for args, fragment in [
        ([str(binary)], "not UTF-8 text"),
        ([params, "--schema", str(tmp_path / "nope.json")], "does not exist"),
        ([params, "--schema", str(tmp_path)], "is a directory"),
        ([params, "--schema", str(tmp_path / "bad.json")], "is not JSON text"),
        ([params, "--schema", str(tmp_path / "list.json")], "is not a JSON schema"),
    ]:
        rc = main(["validate-params", *args])
        err = capsys.readouterr().err
        assert rc == 2, (args, err)
        assert fragment in err and len(err.strip().splitlines()) == 1, (args, err)


def test_code_hash_follows_what_each_stage_runs():
    """Issue 14.1: a method's compression runs its own module and the shared core, never
    another method's; calibration runs no method module at all."""
    from svdzoo import codehash

    mods = codehash.method_modules()
    assert mods["duo-svd"] == "svdzoo.methods.duo_svd" and mods["svd-llm"].endswith("baselines")
    names = {p.name for p in codehash.stage_files("compress", "duo-svd")}
    assert {"duo_svd.py", "linalg.py", "compression.py", "modeling_svdzoo.py"} <= names
    assert not names & {"adasvd.py", "ressvd.py", "baselines.py", "svd_llm_v2.py"}
    calib = {p.relative_to(codehash.PACKAGE).as_posix() for p in codehash.stage_files("calibrate")}
    assert "calibration/gram.py" in calib and "methods/duo_svd.py" not in calib
    report = {p.name for p in codehash.stage_files("report")}
    # the report validates its params file (the method registry, not a method module)
    assert "figures.py" in report and "duo_svd.py" not in report
    # Duo-SVD's split search is its own package: the compressions run it, the sensitivity
    # tables (whitened SVDs from `linalg`) and the report do not, so editing it reruns no table
    split = {"column_split/split_search.py", "column_split/rest_problem.py"}
    for stage, method in (("compress", "duo-svd"), ("sensitivity", None), ("report", None)):
        files = {
            p.relative_to(codehash.PACKAGE).as_posix() for p in codehash.stage_files(stage, method)
        }
        searched = {f for f in files if f.startswith("column_split/")}
        assert "linalg.py" in files, stage
        assert split <= searched if stage == "compress" else not searched, stage
    assert codehash.code_hash("compress", "svd") == codehash.code_hash("compress", "svd-llm")
    assert codehash.code_hash("compress", "svd") != codehash.code_hash("compress", "duo-svd")
    with pytest.raises(ValueError, match="registered method"):
        codehash.stage_files("compress", "nope")


def test_a_corpus_path_names_one_directory_inside_data():
    """An absolute corpus path used to be spliced into the cache path whole, putting every
    model's statistics at one place outside data/."""
    from svdzoo.paths import Layout, calib_tag

    tag = calib_tag("/abs/texts/corpus.txt", 32, 256, 3)
    assert "/" not in tag and tag.startswith("corpus-") and tag.endswith("-n32-l256-s3")
    assert calib_tag("/other/corpus.txt", 32, 256, 3) != tag
    for model in ("a", "b"):
        assert Layout().gram(model, tag) == Path("data/stats") / model / tag / "gram"


def test_model_and_method_names_that_join_alike_are_refused(default):
    """`ref-duo` with `svd` and `ref` with `duo-svd` both join as `ref-duo-svd`: DVC kept one
    of the two evaluate stages and Snakemake gave both jobs one log file."""
    bad = copy.deepcopy(default)
    ref = next(k for k, v in bad["models"].items() if v["source"] == "reference")
    bad["models"][f"{ref}-duo"] = copy.deepcopy(bad["models"][ref])
    bad["methods"] = ["svd", "duo-svd"]
    _fails(bad, f"{ref}-duo-svd", "rename a model key")
    C.validate_params({**bad, "methods": ["svd", "svd-llm"]})  # nothing joins alike


def test_a_reference_models_corpus_file_is_its_input(default):
    """`prepare_model`'s input in the Snakefile: the local file a reference model trains on
    (editing it reran nothing), none for a named corpus or a pypi model."""
    p = copy.deepcopy(default)
    p["models"]["ref-opt"]["corpus"] = "corpora/ref.txt"
    p = C.validate_params(p, SCHEMA)
    assert C.model_corpus_files(p, "ref-opt") == ["corpora/ref.txt"]
    assert C.model_corpus_files(p, "smollm2-135m") == []
    assert C.corpus_files(p, "models") == ["corpora/ref.txt"]
    assert C.model_corpus_files(C.validate_params(default, SCHEMA), "ref-opt") == []


@pytest.mark.parametrize(
    "method, option",
    [
        ("duo-svd-independent", {"protocol": "per-ratio"}),
        ("duo-svd", {"protocol": "independent"}),
        ("duo-svd", {"kind": "asvd"}),
        ("asvd", {"kind": "duo"}),
    ],
)
def test_an_option_that_changes_the_statistics_read_is_refused(default, method, option):
    """Both engines give a method the sensitivity table its registered allocator reads: an
    option choosing another protocol or kind validated, then compress refused the table the
    DAG had computed for it (after the KL/perplexity tables had run)."""
    p = copy.deepcopy(default)
    p["methods"] = [method]
    p["method_options"] = {method: option}
    _fails(p, f"method_options.{method}.{next(iter(option))}", "changes which statistics")
    same = {"duo-svd": "per-ratio", "duo-svd-independent": "independent"}.get(method)
    if same:  # restating the registered value is fine
        p["method_options"] = {method: {"protocol": same}}
        C.validate_params(p, SCHEMA)


@pytest.mark.parametrize(
    "section, keys",
    [
        ("execution", ("evaluate", "batch-size")),
        ("execution", ("calibrate", "batch-size")),
        ("execution", ("sensitivity", "max-tokens")),
        ("offline_tasks", ("n-examples",)),
    ],
)
def test_counts_below_one_are_refused_at_validation(default, section, keys):
    """A zero batch size or question count validated, and its job failed only when it ran
    (an evaluate batch size after every compression)."""
    bad = copy.deepcopy(default)
    node = bad.setdefault(section, {}) or {}
    bad[section] = node
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = 0
    _fails(bad, f"{section}.{'.'.join(keys)}", "minimum of 1")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("compress", "ratio", 0.5),
        ("compress", "method", "svd"),
        ("compress", "option", "whitening=eigen"),
        ("sensitivity", "kind", "asvd"),
        ("calibration", "kind", "fisher"),
        ("evaluation", "model-name", "other"),
        ("offline_tasks", "corpora", "pydoc"),
    ],
)
def test_a_flag_the_workflow_sets_per_job_is_refused(default, section, key, value):
    """Both engines put a section's flags after the ones they set per job, and argparse
    keeps the last value: `compress: {ratio: 0.5}` validated and compressed every ratio's
    job at 0.5 into its r0.20 / r0.40 ... directory."""
    bad = copy.deepcopy(default)
    bad.setdefault(section, {})[key] = value
    _fails(bad, f"{section}.{key}", "sets it per job")


@pytest.mark.parametrize(
    ("section", "key", "value", "fragment"),
    [
        ("compress", "dtype", "bf16", "unknown dtype"),
        ("offline_tasks", "n-choices", "four", "not a valid value"),
        ("evaluation", "seed", 1.5, "not a valid value"),
        ("calibration", "fisher-batch-size", "two", "not a valid value"),
        ("offline_tasks", "split", True, "takes a value"),
        ("calibration", "force", "yes", "a switch"),
    ],
)
def test_flag_values_are_parsed_as_the_command_would(default, section, key, value, fragment):
    """A flag section's keys were checked against the command's options, its values not:
    `compress: {dtype: bf16}` or `offline_tasks: {n-choices: four}` validated and failed in their
    first job, after the models were trained and calibrated."""
    bad = copy.deepcopy(default)
    bad.setdefault(section, {})[key] = value
    _fails(bad, f"{section}.{key}", fragment)


def test_valid_flag_values_and_switches_pass(default):
    good = copy.deepcopy(default)
    good["compress"] = {"dtype": "bfloat16"}
    good["calibration"] = {**good["calibration"], "force": True, "fisher-batch-size": 2}
    good["execution"] = {"calibrate": {"memory-budget-mb": 512}}
    C.validate_params(good, SCHEMA)
    bad = copy.deepcopy(default)
    bad["execution"] = {"calibrate": {"memory-budget-mb": "lots"}}
    _fails(bad, "execution.calibrate.memory-budget-mb", "not a valid value")


@pytest.mark.parametrize(("key", "value"), [("seqlen", 128), ("seed", 9), ("corpus", "pysource")])
def test_sensitivity_windows_must_come_from_the_gram_caches_set(default, key, value):
    """`sensitivity` refuses a window length, seed or corpus other than its Gram cache's
    (compress would refuse the table): it validated and failed after calibration."""
    bad = copy.deepcopy(default)
    bad["sensitivity"] = {**bad["sensitivity"], key: value}
    _fails(bad, f"sensitivity.{key}", f"calibration.{key}")
    same = copy.deepcopy(default)
    same["sensitivity"] = {**same["sensitivity"], key: same["calibration"][key]}
    C.validate_params(same, SCHEMA)


def test_a_ratio_is_written_as_its_path_tag(default):
    """'00.20' matched the schema: DVC made r00.20 paths and Snakemake r0.20 ones, and
    next to '0.20' the same ratio was compressed twice."""
    bad = copy.deepcopy(default)
    bad["ratios"] = ["0.20", "00.20"]
    _fails(bad, "ratios[1]", "'0.20'")
