"""The statistics cache: one directory = `stats.safetensors` + `manifest.json`.

The manifest says what the tensors were computed from (model fingerprint, corpus and its
fingerprint, nsamples, seqlen, seed, dtype, package version, group/module names, token
counts) and carries the sha256 of the tensor file. Loading compares it with what the
caller expects and verifies the hash, so a stale, truncated or corrupted cache raises
`CacheError` instead of silently feeding wrong statistics to a method.

The tensor file is written tensor by tensor (`SafetensorsWriter`), so statistics that do not
fit in memory at once (a 70B model's Grams) can still be stored; the layout is the standard
safetensors format, readable by `safetensors.safe_open` with lazy per-tensor loading.
Everything is written inside `svdzoo.io.atomic_dir`: a cache directory exists complete or
not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from svdzoo.calibration.stats import CalibrationStats, FisherStats, _Cached
from svdzoo.codehash import recorded
from svdzoo.errors import CacheError, ConfigError
from svdzoo.io import atomic_dir, read_json_object
from svdzoo.provenance import made_with

MANIFEST = "manifest.json"
TENSORS = "stats.safetensors"
FORMAT_VERSION = 2  # 2: the manifest carries manifest_sha256 (its own seal)
KINDS = ("gram", "fisher")

_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
}


class SafetensorsWriter:
    """Append tensors one at a time to a body file; `finish` prepends the header.

    Deterministic: same tensors in the same order give the same bytes.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._body_path = self.path.with_name(self.path.name + ".body")
        self._body = open(self._body_path, "wb")  # noqa: SIM115 (closed in finish)
        self._entries: dict[str, dict[str, Any]] = {}
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._entries:
            raise ValueError(f"tensor {name!r} written twice")
        t = tensor.detach().to("cpu").contiguous()
        if t.dtype not in _ST_DTYPES:
            raise ValueError(f"unsupported dtype {t.dtype} for {name!r}")
        data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        nbytes = t.numel() * t.element_size()
        self._body.write(memoryview(data))
        self._entries[name] = {
            "dtype": _ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [self._offset, self._offset + nbytes],
        }
        self._offset += nbytes

    def finish(self, metadata: Mapping[str, str] | None = None) -> str:
        """Write the final file and return its sha256."""
        self._body.close()
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        header.update(self._entries)
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)  # keep the data 8-byte aligned, as safetensors does
        sha = hashlib.sha256()
        with open(self.path, "wb") as out, open(self._body_path, "rb") as body:
            for chunk in (struct.pack("<Q", len(hb)), hb):
                out.write(chunk)
                sha.update(chunk)
            while chunk := body.read(1 << 24):
                out.write(chunk)
                sha.update(chunk)
        self._body_path.unlink()
        return sha.hexdigest()

    def abort(self) -> None:
        self._body.close()
        self._body_path.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            sha.update(chunk)
    return sha.hexdigest()


def base_manifest(kind: str, **fields: Any) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}")
    return {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        **made_with(),
        **fields,
    }


def model_manifest(
    kind: str,
    model: torch.nn.Module,
    *,
    corpus: Any,
    nsamples: int,
    seqlen: int,
    seed: int,
    model_id: str | None,
    batch_size: int | None = None,
    tokenizer_fingerprint: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """`base_manifest` plus what identifies the model and the calibration data.

    Gram and Fisher caches record these the same way; `fields` add the product's own keys
    (its groups or targets, reduction, ...).
    """
    from svdzoo.data import get_corpus, window_prefix
    from svdzoo.models import adapter_for, dtype_name, fingerprint

    adapter = adapter_for(model)
    corp = get_corpus(corpus) if isinstance(corpus, str) else corpus
    return base_manifest(
        kind,
        model=model_id or getattr(model.config, "_name_or_path", "") or model.config.model_type,
        model_fingerprint=fingerprint(model),
        model_type=model.config.model_type,
        family=adapter.name,
        layers_path=adapter.layers_path,
        num_layers=len(adapter.layers(model)),
        corpus=corpus if isinstance(corpus, str) else corp.name,
        corpus_fingerprint=corp.fingerprint,
        nsamples=nsamples,
        seqlen=seqlen,
        seed=seed,
        window_prefix=list(window_prefix(model.config)),
        dtype=dtype_name(model),
        code=recorded("calibrate"),
        # recorded only where it changes the result (Fisher: samples per gradient); the
        # Gram's batch size is execution-only and its bytes do not depend on it
        **({} if batch_size is None else {"batch_size": batch_size}),
        # the tokens the windows are (`check_tokenizer`); None from callers without one
        **(
            {}
            if tokenizer_fingerprint is None
            else {"tokenizer_fingerprint": tokenizer_fingerprint}
        ),
        **fields,
    )


def write_cache(
    out: str | os.PathLike[str],
    manifest: dict[str, Any],
    tensors: Mapping[str, torch.Tensor],
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Atomically write a cache directory from in-memory tensors; returns the final manifest."""
    with CacheDirWriter(out, manifest, force=force) as w:
        for name, t in tensors.items():
            w.add(name, t)
    return w.manifest


class CacheDirWriter:
    """Stream tensors into a new cache directory; it appears (atomically) on clean exit.

    Use as a context manager; `manifest` may be updated before the block ends (token
    counts known only at the end). The manifest is written last, inside the atomic dir.
    An existing `out` is replaced only if it is a cache of the same kind (or `force`).
    """

    def __init__(
        self, out: str | os.PathLike[str], manifest: dict[str, Any], *, force: bool = False
    ):
        self.out = Path(out)
        self.manifest = dict(manifest)
        self._ctx = atomic_dir(self.out, self.manifest["kind"], force=force)
        self._writer: SafetensorsWriter | None = None
        self._names: list[str] = []

    def __enter__(self) -> CacheDirWriter:
        self._tmp = self._ctx.__enter__()
        self._writer = SafetensorsWriter(self._tmp / TENSORS)
        return self

    def add(self, name: str, tensor: torch.Tensor) -> None:
        assert self._writer is not None, "use CacheDirWriter as a context manager"
        self._writer.add(name, tensor)
        self._names.append(name)

    def _finish(self) -> None:
        assert self._writer is not None
        sha = self._writer.finish({"kind": self.manifest["kind"]})
        path = self._tmp / TENSORS
        self.manifest.update(
            file=TENSORS, sha256=sha, bytes=path.stat().st_size, tensors=self._names
        )
        seal(self.manifest)
        (self._tmp / MANIFEST).write_text(
            json.dumps(self.manifest, indent=2, sort_keys=True) + "\n"
        )

    def __exit__(self, exc_type, exc, tb) -> bool | None:
        assert self._writer is not None
        if exc_type is None:
            # finishing copies the whole body behind its header, so it is where a disk fills
            # up: its failure goes through `atomic_dir` too (the temporary removed, ENOSPC as
            # one line), not past it
            try:
                self._finish()
            except BaseException as failure:
                self._writer.abort()
                if not self._ctx.__exit__(type(failure), failure, failure.__traceback__):
                    raise
                return None
            return self._ctx.__exit__(None, None, None)
        self._writer.abort()
        return self._ctx.__exit__(exc_type, exc, tb)


# ---------------------------------------------------------------- loading


class _Replaced(Exception):
    """The directory being read was replaced by a writer meanwhile: read the new one."""


def _same_dir(path: Path, dfd: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    pinned = os.fstat(dfd)
    return (st.st_dev, st.st_ino) == (pinned.st_dev, pinned.st_ino)


def _open_in(path: Path, dfd: int, name: str) -> int | None:
    """An fd of `name` in the pinned directory; None if it is not there (and the directory
    is still the one at `path`); `_Replaced` if the directory was swapped out meanwhile."""
    try:
        return os.open(name, os.O_RDONLY, dir_fd=dfd)
    except FileNotFoundError:
        if not _same_dir(path, dfd):
            raise _Replaced from None
        return None


def _pinned(path: str | os.PathLike[str], read):
    """`read(path, dfd)` on the directory `path` names, pinned by an open fd.

    Writers (`io.atomic_dir`) swap a finished directory in and delete the old one, so a
    check-then-read on paths could mix two outputs or hit a file deleted under it. Every
    file is opened relative to one pinned directory instead; if that directory is deleted
    before its files are open, `read` raises `_Replaced` and the new one is read.
    """
    path = Path(path)
    named = Path(os.path.abspath(path))  # `.` and `..` have no name to put a lock beside
    lock = named.with_name(f".{named.name}.lock") if named.name else None
    for attempt in range(100):
        try:
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            if attempt < 50 and lock is not None and lock.exists():  # a writer is moving it in
                time.sleep(0.01)
                continue
            raise CacheError(
                f"{path}: no {MANIFEST}; not a statistics cache (or it was never completed)"
            ) from None
        except NotADirectoryError:
            raise CacheError(f"{path}: not a directory, so not a statistics cache") from None
        try:
            return read(path, dfd)
        except _Replaced:
            time.sleep(0.001 * attempt)
        finally:
            os.close(dfd)
    raise CacheError(f"{path}: replaced again and again by other processes while being read")


def _manifest_in(path: Path, dfd: int) -> dict[str, Any]:
    mpath = path / MANIFEST
    fd = _open_in(path, dfd, MANIFEST)
    if fd is None:
        raise CacheError(
            f"{path}: no {MANIFEST}; not a statistics cache (or it was never completed)"
        )
    with os.fdopen(fd, "rb") as f:
        raw = f.read()
    manifest = read_json_object(
        mpath,
        CacheError,
        "compute the statistics again",
        kind="a statistics cache's manifest",
        raw=raw,
    )
    if manifest.get("kind") not in KINDS:
        raise CacheError(f"{mpath}: not a statistics cache manifest (kind must be one of {KINDS})")
    check_seal(manifest, str(mpath))
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    return _pinned(path, _manifest_in)


SEAL = "manifest_sha256"


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own seal.

    The tensor file's sha256 lives in the manifest, so sealing the manifest covers both:
    a hand-edited manifest (say `nsamples` changed to match a directory name) is refused."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest[SEAL] = manifest_digest(manifest)
    return manifest


def check_seal(
    manifest: Mapping[str, Any],
    where: str,
    redo: str = "recompute it (the same command with --force)",
) -> None:
    if SEAL not in manifest:
        raise CacheError(
            f"{where}: the manifest has no {SEAL} (written by an older svdzoo, or edited); {redo}"
        )
    if manifest[SEAL] != manifest_digest(manifest):
        raise CacheError(
            f"{where}: the manifest was edited after it was written ({SEAL} does not match); {redo}"
        )


def check_same_architecture(manifest: Mapping[str, Any], config: Any, what: str) -> None:
    """Statistics of a model of another type or depth are another model's: said so from
    the config alone, before the dtype and tokenizer checks, which another model would
    also fail (its Gram was called "computed with another tokenizer")."""
    text = getattr(config, "text_config", None)
    layers = getattr(config, "num_hidden_layers", None) or getattr(text, "num_hidden_layers", None)
    have = (manifest.get("model_type"), manifest.get("num_layers"))
    now = (getattr(config, "model_type", None), layers)
    if None in have or None in now:
        return
    text_type = getattr(text, "model_type", None)
    if (have[0] not in (now[0], text_type)) or have[1] != now[1]:
        raise CacheError(
            f"{what} were computed on another model ({manifest.get('model')!r}: "
            f"{have[0]}, {have[1]} layers; this one is {now[0]}, {now[1]} layers)"
        )


def check_tokenizer(manifest: Mapping[str, Any], tokenizer: Any, what: str) -> None:
    """Statistics made with another tokenizer (the same weights) were measured on other
    tokens: refused, naming both (a cache without the record predates it and is taken
    as is)."""
    from svdzoo.data import tokenizer_fingerprint

    made = manifest.get("tokenizer_fingerprint")
    if made is None:
        return
    now = tokenizer_fingerprint(tokenizer)
    if made != now:
        raise CacheError(
            f"{what} were computed with another tokenizer (fingerprint {made}, this model's "
            f"is {now}): the same text gives other tokens now; compute them again"
        )


def check_made_in_dtype(manifest: Mapping[str, Any], dtype: str, what: str, doing: str) -> None:
    """Statistics computed with the model in another dtype fingerprint another model: say
    so before the weights load (it was refused afterwards as "computed on another model",
    the same model)."""
    made = manifest.get("dtype")
    if made is not None and str(made) != str(dtype):
        raise ConfigError(
            f"{what} were computed with the model in {made}, and this {doing} loads it in "
            f"{dtype}: pass --dtype {made}, or compute them again with --dtype {dtype}"
        )


def check_window_prefix(manifest: Mapping[str, Any], config: Any, what: str) -> None:
    """Statistics measured on windows the model would not see now (a Gemma cache made
    before windows began with its BOS) are refused, naming both prefixes."""
    from svdzoo.data import window_prefix

    want = list(window_prefix(config))
    have = list(manifest.get("window_prefix") or [])  # none recorded: made without one
    if have != want:
        raise CacheError(
            f"{what} were computed on windows starting with {have or 'no prefix'}, but this "
            f"model's windows start with {want or 'no prefix'} (svdzoo.data.window_prefix); "
            "recompute them"
        )


def cached_windows(
    manifest: Mapping[str, Any],
    tokenizer: Any,
    *,
    corpus: str | None = None,
    hint: str = "",
) -> torch.Tensor:
    """The calibration windows a cache was computed on, cut again from its corpus (or
    `corpus`, a path to the same text), its nsamples/seqlen/seed and its recorded prefix.

    Replaying through the same model then gives back the cached statistics. A corpus whose
    text is not the cache's (an edited file, another Python's `pydoc`) would give other
    windows under the same name: refused by its fingerprint, before any forward pass.
    `hint` ends the message when the corpus cannot be loaded."""
    from svdzoo.data import calibration_windows, get_corpus
    from svdzoo.errors import CorpusError

    missing = [k for k in ("corpus", "nsamples", "seqlen", "seed") if manifest.get(k) is None]
    if missing:
        raise CacheError(f"the cache's manifest lacks {missing}: cannot replay its windows")
    check_tokenizer(manifest, tokenizer, "the cache's statistics")
    source = str(corpus or manifest["corpus"])
    try:
        text = get_corpus(source)
    except CorpusError as exc:
        raise CacheError(
            f"cannot load calibration corpus {source!r} to replay the cache's windows ({exc})"
            + (f"; {hint}" if hint else "")
        ) from exc
    fp = manifest.get("corpus_fingerprint")
    if fp is not None and text.fingerprint != fp:
        raise CacheError(
            f"calibration corpus {source!r} is not the one the cache was computed on "
            f"(fingerprint {text.fingerprint}, the cache's {fp})"
        )
    return calibration_windows(
        tokenizer,
        text,
        int(manifest["nsamples"]),
        int(manifest["seqlen"]),
        int(manifest["seed"]),
        # a cache made before windows had prefixes recorded none, and had none
        prefix=manifest.get("window_prefix") or (),
    )


def check_expected(
    manifest: Mapping[str, Any], expect: Mapping[str, Any] | None, where: str
) -> None:
    """Raise CacheError naming every key whose value differs from the request."""
    if not expect:
        return
    diffs = [
        f"{k}: cache has {manifest.get(k, '<missing>')!r}, requested {v!r}"
        for k, v in expect.items()
        if manifest.get(k, _MISSING) != v
    ]
    if diffs:
        raise CacheError(
            f"{where}: statistics cache does not match the request ({'; '.join(diffs)})"
        )


_MISSING = object()


def _fd_path(fd: int) -> str | None:
    """A path that opens the same file as `fd`, even once its name is deleted."""
    for base in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(base):
            return f"{base}/{fd}"
    return None  # pragma: no cover


def _open(path: str | os.PathLike[str], kind: str, expect, verify: bool) -> tuple[dict, Any]:
    return _pinned(path, lambda p, dfd: _open_pinned(p, dfd, kind, expect, verify))


def _open_pinned(path: Path, dfd: int, kind: str, expect, verify: bool) -> tuple[dict, Any]:
    from safetensors import safe_open

    manifest = _manifest_in(path, dfd)
    if manifest["kind"] != kind:
        raise CacheError(
            f"{path}: a {manifest['kind']!r} cache, but a {kind!r} cache was requested"
        )
    check_expected(manifest, expect, str(path))
    fname = manifest.get("file", TENSORS)
    fpath = path / fname
    fd = _open_in(path, dfd, fname)
    if fd is None:
        raise CacheError(f"{fpath}: tensor file missing")
    try:
        size = os.fstat(fd).st_size
        if size != manifest.get("bytes"):
            raise CacheError(
                f"{fpath}: {size} bytes, manifest says {manifest.get('bytes')} (truncated?)"
            )
        if verify and _fd_sha256(fd) != manifest.get("sha256"):
            raise CacheError(f"{fpath}: sha256 does not match the manifest (corrupted file)")
        try:  # through the open fd: the file read is the one the manifest describes
            handle = safe_open(_fd_path(fd) or str(fpath), framework="pt")
            names = set(handle.keys())
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise CacheError(f"{fpath}: unreadable safetensors file ({exc})") from exc
    finally:
        os.close(fd)
    missing = [n for n in manifest.get("tensors", []) if n not in names]
    if missing:
        raise CacheError(f"{fpath}: tensors named in the manifest are missing: {missing[:5]}")

    def get(name: str) -> torch.Tensor:
        if name not in names:
            raise CacheError(f"{fpath}: no tensor {name!r}")
        try:
            return handle.get_tensor(name)
        except Exception as exc:
            raise CacheError(f"{fpath}: cannot read tensor {name!r} ({exc})") from exc

    return manifest, get


def _fd_sha256(fd: int) -> str:
    sha = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, 1 << 24, offset):
        sha.update(chunk)
        offset += len(chunk)
    return sha.hexdigest()


def load_stats(
    path: str | os.PathLike[str], *, expect: Mapping[str, Any] | None = None, verify: bool = True
) -> CalibrationStats:
    """Open a Gram cache lazily (tensors are read on access).

    `expect` maps manifest keys to required values (e.g. `{"model_fingerprint": ...,
    "nsamples": 256}`); any difference raises CacheError naming the keys. `verify` hashes
    the whole file (a few seconds per 10 GB); turn it off only for trusted local caches.
    """
    return CalibrationStats(*_open(path, "gram", expect, verify))


def load_fisher(
    path: str | os.PathLike[str], *, expect: Mapping[str, Any] | None = None, verify: bool = True
) -> FisherStats:
    """Open a Fisher cache lazily; same checks as `load_stats`."""
    return FisherStats(*_open(path, "fisher", expect, verify))


def save_stats(
    stats: _Cached, out: str | os.PathLike[str], *, force: bool = False
) -> dict[str, Any]:
    """Write in-memory (or loaded) statistics to a cache directory; returns its manifest."""
    manifest = {
        k: v for k, v in stats.manifest.items() if k not in ("file", "sha256", "bytes", "tensors")
    }
    with CacheDirWriter(out, manifest, force=force) as w:
        for name in stats.tensor_names():
            w.add(name, stats.tensor(name))
    return w.manifest


def expected(model: torch.nn.Module | None = None, **fields: Any) -> dict[str, Any]:
    """An `expect` dict: the model's fingerprint plus any non-None manifest fields given."""
    out = {k: v for k, v in fields.items() if v is not None}
    if model is not None:
        from svdzoo.models import fingerprint

        out["model_fingerprint"] = fingerprint(model)
    return out
