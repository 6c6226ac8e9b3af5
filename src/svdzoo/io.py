"""Atomic, safe file writes: nothing half-written is ever taken as complete, nothing foreign
is ever replaced, and a crash leaves nothing that the next write does not clean up.

`atomic_dir(path, kind)` is how every svdzoo output directory is written:

- **Only an earlier svdzoo output of the same kind is replaced**, and only while it holds
  nothing but the files it was written with (listed in its `.svdzoo-files.json`): a file
  a person added inside it since is named and refused, unless `force`. Each kind is recognised by
  its own manifest (`recognise`): a compressed model's `manifest.json` names its method, a
  statistics cache's names its kind, a sensitivity table's its sensitivity; a task directory
  has `tasks_manifest.json`, a reference model `train_log.json`, a converted pretrained model
  `svdzoo_source.json`. An output whose files say nothing gets a one-line marker file
  (`.svdzoo-output`) naming its kind. Any other existing path (a foreign directory, a file,
  an output of another kind) is refused with `OutputError` naming the path; `force=True`
  (`--force`) replaces it. Never replaced, even with `force`: an input given in `protect`
  (or a directory holding one, or a path inside one) and the current directory or one of
  its parents. An empty
  directory holds nothing to lose and is replaced. A symbolic link as the target is refused:
  the swap would replace the link itself and leave the output it points to stale.
- **Checked before compute.** `check_output` runs the same checks without writing, so a
  command fails in a second rather than after hours of compression; `atomic_dir` runs them
  again when it starts and, under the lock, at the moment it replaces the target.
- **One writer per target.** The temporary directory `.NAME.<pid>.<random>.tmp` is created
  beside the target and held under an exclusive `flock` for the whole write. A second writer
  to the same target finds it locked and gets `OutputError` at once (nothing is overwritten
  silently). A temporary whose lock is free was left by a killed process: the next write to
  that target removes it, and logs that it did. Short critical sections (sweeping, creating,
  committing) are serialised by a lock file `.NAME.lock` beside the target, removed after use.
- **Atomic for readers.** On Linux the finished directory is swapped with the old one in one
  `renameat2(RENAME_EXCHANGE)`, so the target path always names a complete output; elsewhere
  the old directory is moved aside and the new one renamed in (a brief window without it;
  if renaming it in fails, the old one is put back).
- **Permissions follow the umask**: temporaries are created with 0666 / 0777 masked by the
  umask (not `mkstemp`'s 0600 / 0700), and what a library wrote 0600 inside the output
  (safetensors does) is given the umask's mode before the output appears.
- **A full disk is one line**: ENOSPC / EDQUOT while writing becomes `OutputError` naming the
  target; the partial write is removed.

Single files (`atomic_path`, `write_json`) are written to a temporary sibling and renamed;
a symbolic link at the path is replaced by the file, never written through (a DVC cache
linked in with `cache.type: symlink` is never changed).
`check_file_output` refuses, before compute, a file at the path that its `ours` does not
recognise as an earlier output of the same kind (`json_with`, `text_starting`), unless
`force`. Neither check creates a missing directory: the write does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from svdzoo.errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: no locks; single writers only)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MARKER = ".svdzoo-output"  # kind of an output whose own files do not say it
# the files an output was written with: a replacement finds what a person added since
INVENTORY = ".svdzoo-files.json"
# what tools put inside outputs, not a person's files: Snakemake's mtime carrier for
# `directory()` outputs, macOS Finder's folder settings; and any `__pycache__/` (lm-eval
# imports a task directory's `svdzoo_jsonl.py`, and Python caches its bytecode beside it)
TOOL_FILES = frozenset({".snakemake_timestamp", ".DS_Store"})
TOOL_DIRS = frozenset({"__pycache__"})
GENERIC = "output"  # the kind of an unrecognisable output written without an explicit kind
# the kinds `recognise` knows from their own manifests (any other name gets the marker)
COMPRESSED_MODEL = "compressed-model"
REFERENCE_MODEL = "reference-model"
PRETRAINED_MODEL = "pretrained-model"
TASKS = "tasks"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------- recognising outputs


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def recognise(path: _PathLike) -> str | None:
    """The kind of svdzoo output at `path` (from its manifest or marker), else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    marker = path / MARKER
    if marker.is_file():
        obj = _json(marker)
        kind = obj.get("kind") if isinstance(obj, dict) else None
        return kind if isinstance(kind, str) and kind else None
    manifest = _json(path / "manifest.json")
    if isinstance(manifest, dict):
        if manifest.get("kind") in ("gram", "fisher") and "format_version" in manifest:
            return str(manifest["kind"])
        if manifest.get("sensitivity") in ("duo", "asvd") and "format_version" in manifest:
            return f"sensitivity-{manifest['sensitivity']}"
        if "method" in manifest and "modules" in manifest:
            return COMPRESSED_MODEL
    tasks = _json(path / "tasks_manifest.json")
    if isinstance(tasks, dict) and "tasks" in tasks:
        return TASKS
    train_log = _json(path / "train_log.json")
    if isinstance(train_log, dict) and "summary" in train_log and (path / "config.json").is_file():
        return REFERENCE_MODEL
    source = _json(path / "svdzoo_source.json")  # svdzoo.pretrained's converted checkpoints
    if isinstance(source, dict) and "source" in source and (path / "config.json").is_file():
        return PRETRAINED_MODEL
    return None


def _is_empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    except OSError:
        return False


def _describe(path: Path) -> str:
    if path.is_symlink():
        return "a symbolic link"
    if path.is_dir():
        try:
            n = sum(1 for _ in path.iterdir())
        except OSError:
            return "an unreadable directory"
        return f"a directory of {n} entr{'y' if n == 1 else 'ies'} that is not an svdzoo output"
    return "a file" if path.is_file() else "something that is not a directory"


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _existing_inputs(protect: Iterable[_PathLike | None]) -> Iterator[tuple[_PathLike, Path]]:
    """`(input, resolved)` for each input that exists: a hub id or a missing path has
    nothing on disk to lose."""
    for p in protect:
        if p is not None and os.path.exists(p):
            yield p, Path(p).resolve()


def not_there(path: _PathLike, want: str) -> str:
    """Why `path` is not the `want` ("directory" or "file") an input needs: it does not
    exist, or it is the other kind (a file given as a statistics directory was reported as
    missing)."""
    p = Path(path)
    if not os.path.lexists(p):
        return "does not exist"
    if want == "directory":
        return "is a file, not a directory" if p.is_file() else "is not a directory"
    return "is a directory, not a file" if p.is_dir() else "is not a regular file"


def _refuse_directory(path: Path) -> None:
    if path.is_dir():
        raise OutputError(f"{path} is a directory; this output is a file: give a file path")


def _refuse_protected(path: Path, protect: Iterable[_PathLike | None]) -> None:
    """`path` must not be, or contain, the working directory or an input, nor lie inside an
    input (force or not): replacing it would change the input."""
    target = path.resolve()
    try:
        cwd = Path.cwd().resolve()
    except FileNotFoundError:  # the working directory was deleted: nothing there to protect
        cwd = None
    if cwd is not None and _within(cwd, target):
        raise OutputError(
            f"refusing to write {path}: it is the current directory or one of its parents; "
            "give an output directory of its own"
        )
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no home directory known: nothing to protect
        home = None
    if home is not None and _within(home, target):  # `--out ~ --force`: one typo
        raise OutputError(
            f"refusing to write {path}: it is the home directory or one of its parents "
            "(--force does not change this); give an output directory of its own"
        )
    for p, resolved in _existing_inputs(protect):
        if _within(resolved, target):
            what = "is" if resolved == target else "contains"
            raise OutputError(
                f"refusing to write {path}: it {what} the input {p}, which would be "
                "replaced (--force does not change this); choose another output path"
            )
        if resolved in target.parents:  # `--out MODEL/config.json --force` replaced a file of it
            raise OutputError(
                f"refusing to write {path}: it is inside the input {p}, which would be "
                "changed (--force does not change this); choose another output path"
            )


def _check_existing(path: Path, kind: str | None, force: bool) -> str | None:
    """Refuse an existing path this write may not replace; returns its kind (None if new)."""
    if not os.path.lexists(path) or _is_empty_dir(path):
        return None
    found = recognise(path)
    if force:
        if found is None and os.path.lexists(path / ".git"):
            raise OutputError(
                f"refusing to replace {path}: it is a git repository (it holds .git), and "
                "--force replaces only outputs and other directories; choose another path"
            )
        return found
    if found is None:
        raise OutputError(
            f"{path} already exists and is {_describe(path)}; refusing to replace it. "
            "Choose another output path, or pass --force (force=True) to replace it"
        )
    if kind is not None and found != kind:
        raise OutputError(
            f"{path} holds an svdzoo {found} output, not a {kind}; refusing to replace it. "
            "Choose another output path, or pass --force (force=True) to replace it"
        )
    added = _added_files(path)
    if added:
        shown = ", ".join(added[:5]) + (f" and {len(added) - 5} more" if len(added) > 5 else "")
        raise OutputError(
            f"{path} is an earlier svdzoo {found} output, but {len(added)} file"
            f"{'s' if len(added) > 1 else ''} in it {'were' if len(added) > 1 else 'was'} not "
            f"written by svdzoo ({shown}); refusing to replace it. Move them out, or pass "
            "--force (force=True) to replace it with them"
        )
    return found


def _files(root: Path) -> list[str]:
    """Every file and link under `root`, as sorted POSIX paths relative to it."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            out.append((base / name).relative_to(root).as_posix())
    return sorted(out)


def _added_files(path: Path) -> list[str]:
    """The files in the output at `path` that its inventory does not list: what a person
    put there since. An output written before inventories were kept has none to compare."""
    obj = _json(path / INVENTORY)
    listed = obj.get("files") if isinstance(obj, dict) else None
    if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
        return []  # none, or not one svdzoo wrote: nothing to compare against
    known = set(listed) | {INVENTORY}
    try:
        found = _files(path)
    except OSError:
        return []
    return [
        f
        for f in found
        if f not in known
        and f.rsplit("/", 1)[-1] not in TOOL_FILES
        and not TOOL_DIRS.intersection(f.split("/")[:-1])
    ]


def _preflight(
    path: _PathLike,
    kind: str | None,
    force: bool,
    protect: Iterable[_PathLike | None],
    create: bool = True,
) -> Path:
    """The checks every write runs before it locks the target (see `check_output`);
    `create=False` (a check before compute) creates no missing parent, so a command
    refused later leaves no empty directories behind."""
    path = Path(path)
    if path.is_symlink():  # the swap would replace the link and leave its target stale
        raise OutputError(
            f"{path} is a symbolic link (to {os.readlink(path)}); an output directory is "
            "replaced as a whole, which would replace the link, not what it points to. "
            "Give the target's own path"
        )
    _refuse_protected(path, protect)
    _check_name_length(path)
    _check_existing(path, kind, force)
    (_ensure_parent if create else _check_parent)(path)
    return path


# what `_temp_name` adds to a name: ".", ".<pid, up to 7 digits>.<8 hex>.tmp"
_TEMP_EXTRA = len(".") + len(".4194304.") + 8 + len(".tmp")


def _check_name_length(path: Path) -> None:
    """A name whose temporary beside it would be too long for the filesystem: a raw
    `OSError: [Errno 36] File name too long` from the write (in `calibrate`, after the
    model had loaded)."""
    parent = next((p for p in (path.parent, *path.parent.parents) if p.is_dir()), Path("."))
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    room = limit - _TEMP_EXTRA
    if len(path.name.encode("utf-8")) > room:
        raise OutputError(
            f"output name {path.name[:40]}... is {len(path.name.encode('utf-8'))} bytes; "
            f"svdzoo writes it through a temporary beside it, so it can be at most {room} "
            "bytes here: choose a shorter name"
        )


def check_output(
    path: _PathLike,
    kind: str | None = None,
    *,
    force: bool = False,
    protect: Iterable[_PathLike | None] = (),
) -> None:
    """Everything `atomic_dir(path, kind)` would refuse, checked before any compute.

    Refuses (`OutputError`, one line naming the path): the current directory, the home
    directory or a parent of either; a path that is, contains or lies inside one of
    `protect` (the inputs); an existing path that is not an earlier svdzoo output of `kind`
    (unless `force`, which still never replaces a git repository); a path another
    process is writing; a path whose directory cannot be created or written. Stale
    temporaries that a killed writer left beside the target are removed (and logged).
    """
    path = _preflight(path, kind, force, protect, create=False)
    if not path.parent.is_dir():  # nothing can be writing there, nor have left temporaries
        return
    with _target_lock(path):
        _sweep(path)


# ---------------------------------------------------------------- locks and temporaries


def existing_ancestor(path: Path, what: str, hint: str = "") -> Path | None:
    """The first of `path` and its ancestors that exists (None if none does), refused with
    `OutputError` ("`what`: ... is not a directory`hint`") when it is not a directory:
    creating `path` there would fail only later, once compute has run."""
    for above in (path, *path.parents):
        if os.path.lexists(above):
            if not above.is_dir():
                raise OutputError(f"{what}: {above} is not a directory{hint}")
            return above
    return None


def _check_parent(path: Path) -> None:
    """What `_ensure_parent` needs, created nothing: the nearest existing directory above
    `path` can take the missing ones."""
    above = existing_ancestor(path.parent, f"cannot write {path}")
    if above is None:
        raise OutputError(f"cannot write {path}: no directory above it exists")
    if not os.access(above, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: {above} is not writable")


def _ensure_parent(path: Path) -> None:
    parent = path.parent
    existing_ancestor(parent, f"cannot write {path}")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: {exc.strerror or exc} ({exc.filename or parent})"
        ) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: {parent} is not writable")


@contextlib.contextmanager
def _target_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on `.NAME.lock` beside `path`; the file is removed on release.

    The classic protocol: after `flock` succeeds, check that the name still refers to the
    locked inode (a previous holder may have unlinked it meanwhile), else retry.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror} ({lock})") from exc
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _temp_name(path: Path) -> Path:
    """A fresh name `.NAME.<pid>.<8 hex>.tmp` beside `path`, the form `_temp_pattern` sweeps."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _temp_pattern(path: Path) -> re.Pattern[str]:
    # exactly what `_temp_name` makes (.NAME.<pid>.<8 hex>.tmp), nothing looser: a sweep
    # deletes what matches, and `.NAME.previous.tmp` was a user's folder (the form written
    # before locking existed, 8 mkdtemp characters, is no longer swept)
    return re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp")


def _try_lock_dir(tmp: Path) -> int | None:
    """An fd holding an exclusive lock on directory `tmp`, or None if another process has it."""
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    if fcntl is None:  # pragma: no cover
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def _sweep(path: Path) -> None:
    """Remove stale temporaries of `path`; refuse if a live writer holds one. Under the lock."""
    pattern = _temp_pattern(path)
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return
    for name in sorted(names):
        m = pattern.fullmatch(name)
        tmp = path.parent / name
        if not m or tmp.is_symlink() or not tmp.is_dir():
            continue
        try:
            fd = _try_lock_dir(tmp)
        except FileNotFoundError:
            continue
        if fd is None:
            raise OutputError(
                f"{path} is being written by another process (pid {m.group(1)}, temporary {tmp}); "
                "wait for it to finish, or write somewhere else"
            )
        try:
            size = _tree_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            os.close(fd)
        log.warning(
            "removed %s (%.1f MiB), a stale temporary of %s left by an interrupted write",
            tmp,
            size / 2**20,
            path,
        )


def _new_temp(path: Path) -> Path:
    """A fresh `.NAME.<pid>.<random>.tmp` directory beside `path`, with umask permissions."""
    while True:
        tmp = _temp_name(path)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


# ---------------------------------------------------------------- replacing


_RENAMEAT2: list[Any] = []


def _renameat2() -> Any:
    if not _RENAMEAT2:
        fn = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(AttributeError, OSError):
                fn = ctypes.CDLL(None, use_errno=True).renameat2
        _RENAMEAT2.append(fn)
    return _RENAMEAT2[0]


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False  # an old kernel or a file system without exchange
    raise OSError(err, os.strerror(err), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _umask() -> int:
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: read it the racy way (and put it back)
    os.umask(mask)
    return mask


def _follow_umask(root: Path) -> None:
    """Modes as `open`/`mkdir` under the umask would give them: safetensors and tempfile
    create 0600 files and 0700 directories, unreadable to the rest of a shared project."""
    mask = _umask()
    for dirpath, _, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode):
                continue
            want = (0o777 if st.st_mode & stat.S_IXUSR else 0o666) & ~mask
            if stat.S_IMODE(st.st_mode) != want:
                os.chmod(p, want)


def _commit(tmp: Path, path: Path, kind: str | None, force: bool) -> None:
    """Put the finished `tmp` at `path`. Called under the target lock."""
    _follow_umask(tmp)
    found_new = recognise(tmp)
    new_kind = kind or found_new or GENERIC
    if found_new is None:
        (tmp / MARKER).write_text(json.dumps({"kind": new_kind}) + "\n")
    elif kind is not None and found_new != kind:
        raise OutputError(f"internal error: {path} was written as {kind} but holds {found_new}")
    (tmp / INVENTORY).write_text(json.dumps({"files": _files(tmp)}, indent=0) + "\n")
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    try:
        old_kind = _check_existing(path, new_kind, force)
    except OutputError as exc:  # it changed while this job computed: keep the result
        kept = _keep_finished(tmp, path)
        raise OutputError(f"{exc}. The finished output is kept at {kept}") from None
    if old_kind == new_kind:
        log.info("replacing the earlier %s output at %s", old_kind, path)
    elif not _is_empty_dir(path):
        what = f"an svdzoo {old_kind} output" if old_kind else _describe(path)
        log.warning("--force: replacing %s (%s)", path, what)
    if _exchange(tmp, path):
        _remove(tmp)  # now the old contents
        return
    aside = _new_temp(path)
    os.rmdir(aside)
    os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:  # put the old output back: named like a temporary, the next
        os.rename(aside, path)  # write's sweep would delete it as a stale one
        raise
    _remove(aside)


def _keep_finished(tmp: Path, path: Path) -> Path:
    """Move a finished output that may not replace `path` to a free sibling name (not one
    a sweep takes for a stale temporary): hours of compute are not thrown away because a
    file appeared in the target meanwhile."""
    for i in range(1000):
        kept = path.with_name(f"{path.name}.finished-{os.getpid()}" + (f"-{i}" if i else ""))
        if not os.path.lexists(kept):
            os.rename(tmp, kept)
            return kept
    raise OutputError(f"no free name beside {path} to keep the finished output at")


def _no_space(exc: BaseException) -> bool:
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return True
        text = str(e)
        if "No space left on device" in text or "StorageFull" in text:  # wrapped by Rust libs
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _space_error(path: Path, exc: BaseException) -> OutputError:
    return OutputError(
        f"no space left on the device while writing {path}; the partial write was removed "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'ENOSPC'})"
    )


@contextlib.contextmanager
def atomic_dir(
    path: _PathLike,
    kind: str | None = None,
    *,
    force: bool = False,
    protect: Iterable[_PathLike | None] = (),
) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces `path` only if the block succeeds.

    `kind` names the output ("compressed-model", "gram", "fisher", "sensitivity-duo",
    "tasks", "reference-model", or any name of your own): an existing `path` is replaced
    only if it is an earlier svdzoo output of that kind. Without `kind`, the kind is read
    from what the block wrote (its manifest) and the existing output must match it. See
    the module docstring for locking, stale temporaries, `force` and `protect`.
    """
    path = _preflight(path, kind, force, protect)
    with _locked_temp(path) as tmp:
        yield tmp
        with _target_lock(path):
            _commit(tmp, path, kind, force)


@contextlib.contextmanager
def staging_dir(target: _PathLike) -> Iterator[Path]:
    """A locked temporary directory `.NAME.<pid>.<random>.tmp` beside `target`, removed on
    exit, for a writer that moves its files into place itself (the report). As with
    `atomic_dir`, a second writer for the same `target` is refused while this one runs,
    and a temporary left by a killed writer is removed by the next one."""
    target = Path(target)
    _ensure_parent(target)
    with _locked_temp(target) as tmp:
        yield tmp


@contextlib.contextmanager
def _locked_temp(path: Path) -> Iterator[Path]:
    """`path`'s fresh temporary, held under `flock` until the block ends and then removed
    (with what `_commit` swapped into it); stale temporaries of `path` are swept first. A
    full disk in the block is `_space_error`. The parent of `path` must exist."""
    with _target_lock(path):
        _sweep(path)
        tmp = _new_temp(path)
        fd = _try_lock_dir(tmp)
    try:
        yield tmp
    except OutputError:
        raise
    except Exception as exc:
        if _no_space(exc):
            raise _space_error(path, exc) from exc
        raise
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if fd is not None:
            os.close(fd)


# ---------------------------------------------------------------- single files


def check_file_output(
    path: _PathLike,
    *,
    protect: Iterable[_PathLike | None] = (),
    others: Iterable[_PathLike | None] = (),
    ours: Callable[[Path], bool] | None = None,
    what: str = "a file",
    force: bool = False,
) -> Path:
    """Everything a single-file write (`atomic_path`) would refuse, checked before compute.

    Refuses (`OutputError`, one line naming the path): a directory at `path`; a path that
    is one of `protect` (the inputs) or lies inside one (a model directory's `config.json`);
    a path also given for another output in `others`; a path whose directory cannot be
    created or written; and, unless `force`, an existing file that `ours` does not
    recognise as an earlier output of this kind (`what`): a rerun replaces its results,
    never a file svdzoo did not write (`--ppl-out notes.txt` replaced the notes).
    """
    path = Path(path)
    _refuse_directory(path)
    target = path.resolve()
    for p, resolved in _existing_inputs(protect):
        if _within(target, resolved):
            what = "is" if resolved == target else "is inside"
            raise OutputError(
                f"refusing to write {path}: it {what} the input {p}, which would be changed; "
                "choose another output path"
            )
    for other in others:
        if other is not None and Path(other).resolve() == target:
            raise OutputError(f"{path} is given for two outputs; give each its own path")
    if ours is not None and not force and os.path.lexists(path) and not _is_ours(path, ours):
        raise OutputError(
            f"refusing to replace {path}: it is not {what} that svdzoo wrote; move it, "
            "choose another path, or pass --force"
        )
    _check_parent(path)  # created by the write itself (`atomic_path`), not before compute
    return path


def _is_ours(path: Path, ours: Callable[[Path], bool]) -> bool:
    try:
        return path.is_file() and bool(ours(path))
    except (OSError, ValueError, UnicodeDecodeError):  # unreadable: not recognisably ours
        return False


def json_with(*keys: str) -> Callable[[Path], bool]:
    """Recognises a JSON object holding every one of `keys` (an earlier svdzoo output)."""

    def ours(path: Path) -> bool:
        if path.stat().st_size > 64 << 20:  # svdzoo's metric files are kilobytes
            return False
        obj = json.loads(path.read_text())
        return isinstance(obj, dict) and all(k in obj for k in keys)

    return ours


def text_starting(prefix: str) -> Callable[[Path], bool]:
    """Recognises a text file that begins with `prefix` (a generated file's header)."""

    def ours(path: Path) -> bool:
        with open(path, "rb") as f:
            return f.read(len(prefix.encode())) == prefix.encode()

    return ours


@contextlib.contextmanager
def atomic_path(path: _PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    The temporary file is created with 0666 masked by the umask (as `open` would), not 0600.
    A directory at `path` is refused (`OutputError`) before the block runs.
    """
    path = Path(path)
    _refuse_directory(path)
    _check_name_length(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    while True:
        tmp_path = _temp_name(path)
        try:
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        yield tmp_path
        if tmp_path.is_file():  # a writer may have replaced our file with its own (0600)
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except Exception as exc:
        if _no_space(exc):
            raise _space_error(path, exc) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: _PathLike, obj: Any) -> None:
    """Strict JSON only: NaN/Infinity are not JSON, and other tools reject the file."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as exc:
        raise OutputError(
            f"refusing to write {path}: it would hold a non-finite number ({exc})"
        ) from exc
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: _PathLike) -> Any:
    return json.loads(Path(path).read_text())


def read_json_object(
    path: _PathLike,
    error: type[Exception],
    remedy: str | None = None,
    *,
    kind: str | None = None,
    raw: bytes | None = None,
) -> dict[str, Any]:
    """The JSON object at `path` (or its bytes `raw`, read already), else `error` naming the
    file, what is wrong, the `kind` of file expected and `remedy`: the read-decode-check
    every manifest and metric file reader shares, so a damaged one is one line, never a
    traceback. A UTF-8 byte-order mark (an editor's re-save) is read past."""
    tail = f"; {remedy}" if remedy else ""
    try:
        text = (Path(path).read_bytes() if raw is None else raw).decode("utf-8-sig")
        obj = json.loads(text)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}{tail}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not valid JSON ({exc}){tail}") from exc
    if not isinstance(obj, dict):
        what = f", so it is not {kind}" if kind else ""
        raise error(f"{path}: expected a JSON object, found {type(obj).__name__}{what}{tail}")
    return obj


def write_text(path: _PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
