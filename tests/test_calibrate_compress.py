"""`svdzoo calibrate-compress` / `svdzoo.calibrate_and_compress`: a model to a compressed
model in one call, its statistics computed where the workflow files them, reused when they
are this request's and recomputed when not; bad input refused before any compute."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_workflow import MICRO

import svdzoo
from svdzoo import models
from svdzoo.calibration.cache import seal
from svdzoo.cli import main
from svdzoo.errors import CacheError, ConfigError, CorpusError, ModelError, OutputError
from svdzoo.paths import Layout

CALIB = dict(corpus="pydoc", nsamples=4, seqlen=64, seed=1)
TAG = "pydoc-n4-l64-s1"
WEIGHTS = "svdzoo-lowrank.safetensors"


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    return x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)


def test_one_call_gives_the_steps_model_and_files_the_gram_where_the_workflow_does(
    tiny_llama_dir, tmp_path
):
    out = tmp_path / "one-call"
    manifest = svdzoo.calibrate_and_compress(
        tiny_llama_dir, "svd-llm", 0.4, out, **CALIB, stats_root=tmp_path, model_name="tiny"
    )
    gram = Layout(tmp_path).gram("tiny", TAG)
    assert (gram / "manifest.json").is_file()
    assert manifest["statistics"]["gram"]["path"] == str(gram)
    assert json.loads((out / "manifest.json").read_text())["achieved_ratio"] == pytest.approx(
        0.4, abs=0.005
    )
    # the same Gram cache through the separate steps: the same factors, bit for bit
    steps = tmp_path / "steps"
    svdzoo.compress_to_dir(str(tiny_llama_dir), "svd-llm", 0.4, steps, stats=gram)
    assert same_weights(out, steps)


def test_a_cache_is_reused_when_it_is_this_requests_and_replaced_only_when_asked(
    tiny_llama_dir, tiny_opt_dir, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="svdzoo.calibrate_compress")
    run = dict(**CALIB, stats_root=tmp_path, model_name="tiny")
    svdzoo.calibrate_and_compress(tiny_llama_dir, "svd-llm", 0.4, tmp_path / "a", **run)
    gram = Layout(tmp_path).gram("tiny", TAG)
    first = json.loads((gram / "manifest.json").read_text())
    made = (gram / "stats.safetensors").stat().st_mtime_ns
    caplog.clear()
    svdzoo.calibrate_and_compress(tiny_llama_dir, "svd-llm", 0.6, tmp_path / "c", **run)
    assert f"reusing {gram}" in caplog.text and "computing" not in caplog.text
    assert (gram / "stats.safetensors").stat().st_mtime_ns == made
    # another model filed under the same name: refused before anything is computed...
    with pytest.raises(CacheError, match="model_fingerprint(.|\n)*recompute_stats"):
        svdzoo.calibrate_and_compress(tiny_opt_dir, "svd-llm", 0.4, tmp_path / "d", **run)
    assert not (tmp_path / "d").exists()
    assert (gram / "stats.safetensors").stat().st_mtime_ns == made
    # ...and replaced when asked: its own Gram, not the llama's
    caplog.clear()
    svdzoo.calibrate_and_compress(
        tiny_opt_dir, "svd-llm", 0.4, tmp_path / "d", **run, recompute_stats=True
    )
    assert f"recomputing {gram}" in caplog.text and "model_fingerprint" in caplog.text
    again = json.loads((gram / "manifest.json").read_text())
    assert again["model_fingerprint"] != first["model_fingerprint"]
    assert again["family"] == "opt"


def test_a_table_is_reused_refused_when_not_the_requests_and_remade_with_a_new_gram(
    tiny_llama_dir, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="svdzoo.calibrate_compress")
    run = dict(**CALIB, stats_root=tmp_path, model_name="tiny", sensitivity_nsamples=2)
    stats = Layout(tmp_path).stats("tiny", TAG)
    table = stats / "sensitivity-asvd"
    svdzoo.calibrate_and_compress(tiny_llama_dir, "asvd", 0.4, tmp_path / "a", **run)
    made = (table / "table.json").stat().st_mtime_ns
    caplog.clear()
    svdzoo.calibrate_and_compress(tiny_llama_dir, "asvd", 0.6, tmp_path / "b", **run)
    assert f"reusing {table}" in caplog.text and "computing" not in caplog.text
    # other windows: refused before anything is computed, even a missing Gram cache
    shutil.rmtree(stats / "gram")
    other = dict(run, sensitivity_nsamples=3)
    with pytest.raises(CacheError, match="nsamples(.|\n)*recompute_stats"):
        svdzoo.calibrate_and_compress(tiny_llama_dir, "asvd", 0.4, tmp_path / "c", **other)
    assert not (stats / "gram").exists()
    assert (table / "table.json").stat().st_mtime_ns == made
    # the Gram cache made again from the same request has the same bytes: the table stays
    caplog.clear()
    svdzoo.calibrate_and_compress(tiny_llama_dir, "asvd", 0.4, tmp_path / "d", **run)
    assert f"computing {stats / 'gram'}" in caplog.text and f"reusing {table}" in caplog.text
    # a table measured on another Gram cache than the one found: refused, then remade
    manifest = json.loads((table / "manifest.json").read_text())
    manifest["gram"]["sha256"] = "0" * 64
    (table / "manifest.json").write_text(json.dumps(seal(manifest)))
    with pytest.raises(CacheError, match="gram"):
        svdzoo.calibrate_and_compress(tiny_llama_dir, "asvd", 0.4, tmp_path / "e", **run)
    caplog.clear()
    svdzoo.calibrate_and_compress(
        tiny_llama_dir, "asvd", 0.4, tmp_path / "e", **run, recompute_stats=True
    )
    assert f"recomputing {table}" in caplog.text and f"computing {table}" in caplog.text
    assert json.loads((table / "manifest.json").read_text())["gram"]["sha256"] != "0" * 64


def test_fisher_and_per_ratio_sensitivity_methods_compute_and_reuse_what_they_need(
    tiny_llama_dir, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="svdzoo.calibrate_compress")
    run = dict(**CALIB, stats_root=tmp_path, model_name="tiny", sensitivity_nsamples=2)
    stats = Layout(tmp_path).stats("tiny", TAG)
    fwsvd = svdzoo.calibrate_and_compress(tiny_llama_dir, "fwsvd", 0.4, tmp_path / "f", **run)
    assert set(fwsvd["statistics"]) == {"fisher"}
    assert (stats / "fisher" / "manifest.json").is_file() and not (stats / "gram").exists()
    hashed = []
    real = models._hash_model
    monkeypatch.setattr(models, "_hash_model", lambda m: hashed.append(m) or real(m))
    duo = svdzoo.calibrate_and_compress(tiny_llama_dir, "duo-svd", 0.4, tmp_path / "d", **run)
    assert set(duo["statistics"]) == {"gram", "sensitivity-duo"}
    # the weights hashed once for the Gram cache, the table and the compressed model (a
    # pass over 13 GB at 7B), and recorded alike in all three
    assert len(hashed) == 1
    fps = {
        json.loads((d / "manifest.json").read_text())["model_fingerprint"]
        for d in (stats / "gram", stats / "sensitivity-duo-r0.40")
    }
    assert fps == {duo["base_fingerprint"]}
    table = stats / "sensitivity-duo-r0.40"  # Duo-SVD's per-ratio table, as the workflow's
    assert duo["statistics"]["sensitivity-duo"]["path"] == str(table)
    assert json.loads((table / "manifest.json").read_text())["base_ratio"] == 0.4
    # both found again as this request's
    caplog.clear()
    svdzoo.calibrate_and_compress(tiny_llama_dir, "fwsvd", 0.4, tmp_path / "f2", **run)
    svdzoo.calibrate_and_compress(tiny_llama_dir, "duo-svd", 0.4, tmp_path / "d2", **run)
    assert "computing" not in caplog.text
    assert f"reusing {stats / 'fisher'}" in caplog.text and f"reusing {table}" in caplog.text


def test_the_command_line_runs_it(tiny_llama_dir, tiny_opt_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["calibrate-compress", "--method", "svd-llm", "--ratio", "0.4", "--out", "out",
            "--corpus", "pydoc", "--nsamples", "4", "--seqlen", "64", "--seed", "1",
            "--model-name", "tiny"]  # fmt: skip
    assert main([*argv, "--model", str(tiny_llama_dir)]) == 0
    gram = tmp_path / "data/stats/tiny" / TAG / "gram/manifest.json"
    assert (tmp_path / "out" / WEIGHTS).is_file()
    llama = json.loads(gram.read_text())["model_fingerprint"]
    assert main([*argv, "--model", str(tiny_opt_dir)]) == 2  # another model, same name
    assert "--recompute-stats" in capsys.readouterr().err
    assert main([*argv, "--model", str(tiny_opt_dir), "--recompute-stats"]) == 0
    assert json.loads(gram.read_text())["model_fingerprint"] != llama


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"method": "svd-lm"}, ConfigError, "svd-lm"),
        ({"ratio": 1.5}, ConfigError, "compression ratio"),
        ({"corpus": "no-such-corpus"}, CorpusError, "no-such-corpus"),
        ({"seqlen": 1}, ConfigError, "seqlen"),
        ({"model": "./no-such-model"}, ModelError, "no such directory"),
        ({"options": {"precision": "bf16"}}, ConfigError, "precision"),
        ({"foreign_cache": True}, OutputError, "gram"),
        ({"model_name": "../elsewhere"}, ConfigError, "one path component"),
        ({"out_in_stats": True}, ConfigError, "overlap"),
        ({"method": "duo-svd", "ratio": 0.333}, ConfigError, "two decimals"),
        ({"method": "asvd", "options": {"alpha": 0.3}}, ConfigError, "alpha"),
        ({"method": "duo-svd-independent", "options": {"base": 0.35}}, ConfigError, "grid"),
        # the tables are chosen by the method: this one's Gram and table were computed, then
        # compress refused the table
        (
            {"method": "duo-svd-independent", "options": {"protocol": "per-ratio"}},
            ConfigError,
            "protocol: 'per-ratio' changes which statistics",
        ),
    ],
)
def test_bad_input_is_refused_before_any_compute(tiny_llama_dir, tmp_path, change, error, match):
    change = dict(change)
    args = dict(model=str(tiny_llama_dir), method="svd-llm", ratio=0.4, out=tmp_path / "out")
    kwargs = dict(**CALIB, stats_root=tmp_path, model_name="tiny")
    notes = Layout(tmp_path).gram("tiny", TAG) / "notes.txt"
    if change.pop("foreign_cache", False):  # not a Gram cache where one goes: never replaced
        notes.parent.mkdir(parents=True)
        notes.write_text("mine")
    if change.pop("out_in_stats", False):  # the caches would be written inside --out
        args["out"] = tmp_path / "data" / "stats"
    for key in ("method", "ratio", "model"):
        args[key] = change.pop(key, args[key])
    kwargs.update(change)
    out = args["out"]
    with pytest.raises(error, match=match):
        svdzoo.calibrate_and_compress(args.pop("model"), **args, **kwargs)
    assert not out.exists()
    assert not any(tmp_path.rglob("*.safetensors"))
    assert not notes.exists() or notes.read_text() == "mine"


def _params(**sections) -> dict:
    """The micro workflow's params with `sections` replaced, validated as the command's are
    (`report` dropped: its file is looked up from the current directory)."""
    from svdzoo.config import find_schema, validate_params

    params = {k: v for k, v in {**MICRO, **sections}.items() if k != "report"}
    return validate_params(params, find_schema(Path(__file__)))


def test_params_give_the_workflows_settings_and_refuse_what_cannot_be_mirrored(
    tmp_path, monkeypatch
):
    from svdzoo.job_settings import settings_from_params

    def job(params, method, **given):
        return settings_from_params(params, "tiny", method, tmp_path, **given)

    (tmp_path / "data/models/tiny").mkdir(parents=True)
    table = {"nsamples": 2, "ratios": [0.4, 0.8], "seqlen": 32}  # seqlen: the calibration's
    params = _params(method_options={"asvd": {"alpha": 0.5}}, sensitivity=table)
    assert job(params, "asvd") == {
        "model": str(tmp_path / "data/models/tiny"), "corpus": "pydoc", "nsamples": 4,
        "seqlen": 32, "seed": 0, "sensitivity_nsamples": 2, "sensitivity_ratios": [0.4, 0.8],
        "dtype": "float32", "device": "cpu", "options": {"alpha": 0.5},
    }  # fmt: skip
    assert job(_params(), "svd")["device"] == "cpu"  # MICRO's execution.compress.device
    f16 = {**MICRO["calibration"], "dtype": "float16"}
    both16 = _params(calibration=f16, compress={"dtype": "float16"})
    assert job(both16, "svd-llm")["dtype"] == "float16"
    # one dtype for the jobs the method's statistics come from and its compress job
    assert job(_params(calibration=f16), "svd")["dtype"] == "float32"  # plain SVD: no stats
    table32 = {**MICRO["sensitivity"], "dtype": "float32"}
    assert job({**both16, "sensitivity": table32}, "svd-llm")["dtype"] == "float16"
    cpu_probes = {**MICRO["execution"], "sensitivity": {"device": "cpu"}}
    refused = [
        (_params(calibration=f16), "svd-llm", {}, "float16 for calibration, float32 for compress"),
        ({**both16, "sensitivity": table32}, "asvd", {}, "float32 for sensitivity"),
        (_params(calibration={**MICRO["calibration"], "fisher-batch-size": 4}), "fwsvd", {},
         "batches of 4"),
    ]  # fmt: skip
    for params_, method, given, match in refused:
        with pytest.raises(ConfigError, match=match):
            job(params_, method, **given)
    # unless one dtype is asked for
    assert job(_params(calibration=f16), "svd-llm", dtype="bfloat16")["dtype"] == "bfloat16"
    # what cannot change this method's statistics passes
    fisher4 = _params(calibration={**MICRO["calibration"], "fisher-batch-size": 4})
    assert job(fisher4, "svd-llm")["nsamples"] == 4
    assert job(_params(execution=cpu_probes), "asvd")["device"] == "cpu"
    with pytest.raises(ConfigError, match="not a model of the params file, which has tiny"):
        settings_from_params(params, "big", "asvd", tmp_path)
    with pytest.raises(ConfigError, match="made by the workflow and is not there yet"):
        settings_from_params(params, "tiny", "asvd", tmp_path / "elsewhere")
    given = settings_from_params(params, "tiny", "asvd", tmp_path / "elsewhere", "/m")
    assert given["model"] == "/m"  # a model given is taken as it is
    # a corpus file is named by its path as given, relative to the workflow's root: from
    # elsewhere the command would read another file (or none) under the workflow's names
    from svdzoo.job_settings import check_corpus_path

    (tmp_path / "data" / "c.txt").write_text("some text\n")
    root_only = re.escape(f"relative to the workflow's root {tmp_path}: run")
    with pytest.raises(ConfigError, match=root_only):
        check_corpus_path("data/c.txt", tmp_path)
    check_corpus_path("pydoc", tmp_path)  # a named corpus is the same everywhere
    check_corpus_path(str(tmp_path / "data" / "c.txt"), tmp_path / "elsewhere")
    here = tmp_path / "elsewhere"
    (here / "data").mkdir(parents=True)
    monkeypatch.chdir(here)
    (here / "data" / "c.txt").write_text("other text\n")  # its own, not the root's
    with pytest.raises(ConfigError, match=root_only):
        check_corpus_path("data/c.txt", tmp_path)
    monkeypatch.chdir(tmp_path)
    check_corpus_path("data/c.txt", tmp_path)
    check_corpus_path("data/c.txt", ".")


def test_the_command_line_says_what_it_needs(tiny_llama_dir, tmp_path, capsys):
    argv = [
        "calibrate-compress",
        "--method",
        "svd",
        "--ratio",
        "0.4",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--model", "m", "--nsamples", "4"]) == 2
    err = capsys.readouterr().err
    assert "give --corpus, --seqlen, or --params FILE and --model-name" in err
    # plain SVD needs no calibration set at all: the command that takes none is named
    assert "svd reads no statistics: `svdzoo compress --model M --method svd" in err
    svd_llm = [a if a != "svd" else "svd-llm" for a in argv]
    assert main([*svd_llm, "--model", "m", "--nsamples", "4"]) == 2
    assert "reads no statistics" not in capsys.readouterr().err
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(_params()))
    assert main([*argv, "--params", str(params)]) == 2
    assert "--params needs --model-name" in capsys.readouterr().err
    assert main([*argv, "--params", str(tmp_path / "nope.yaml"), "--model-name", "tiny"]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    # the params file is an input: never the output, not even with --force
    before = params.read_bytes()
    out_at = argv.index("--out") + 1
    at_params = [*argv[:out_at], str(params), *argv[out_at + 1 :], "--force"]
    job = ["--params", str(params), "--model-name", "tiny", "--model", str(tiny_llama_dir),
           "--stats-root", str(tmp_path)]  # fmt: skip
    # (and report.published, the report's file, is not looked for: tmp_path has none)
    assert main([*at_params, *job]) == 2
    err = capsys.readouterr().err
    assert f"refusing to write {params}" in err and params.read_bytes() == before, err
    # a params corpus file under --stats-root, run from elsewhere: refused for a method
    # that calibrates, unless another corpus is given; nothing is read for plain SVD
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c.txt").write_text("some text\n")
    own = tmp_path / "own.yaml"
    own.write_text(
        json.dumps(_params(calibration={**MICRO["calibration"], "corpus": "data/c.txt"}))
    )
    job[1] = str(own)
    at_own = [*argv[:1], "--method", "svd-llm", *argv[3:out_at], str(own), *argv[out_at + 1 :]]
    assert main([*at_own, "--force", *job]) == 2
    assert "relative to the workflow's root" in capsys.readouterr().err
    for method, given in (("svd-llm", ["--corpus", "pydoc"]), ("svd", [])):
        at_own[2] = method
        assert main([*at_own, "--force", *job, *given]) == 2
        assert f"refusing to write {own}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
