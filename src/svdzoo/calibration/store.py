"""Activation store: the hidden states that flow between decoder layers, per batch.

Layer-by-layer calibration keeps every calibration batch's hidden state between two
layers. For 256 x 2048 tokens of a 70B model that is ~8 GiB in fp16, so the store keeps
batches in CPU memory only while a shared byte budget allows and writes the rest, one
file per batch, to an offload directory (a fresh temp dir unless one is given). Memory
therefore stops growing with `nsamples` once the budget is reached; the budget is shared
by all stores alive at once (two for plain calibration, four in sequential mode).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from svdzoo import io as svdzoo_io
from svdzoo.errors import OutputError

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 2 * 1024**3
PREFIX = "svdzoo-act-"  # an offload folder: svdzoo-act-<pid>-<mkdtemp's 8 characters>
_LOCKED = re.compile(rf"{re.escape(PREFIX)}\d+-[a-z0-9_]{{8}}")


def check_offload_dir(offload_dir: str | os.PathLike[str] | None) -> None:
    """Refuse an offload folder that cannot be created or written (`OutputError` naming it).

    The folder is first used at the first offload, after the model has loaded and the
    capture has run; a file or an unwritable place given there must fail before that.
    """
    if offload_dir is None:
        return
    path = Path(offload_dir)
    what = f"offload directory {path}"
    hint = "; give a folder for the hidden states beyond the memory budget"
    above = svdzoo_io.existing_ancestor(path, what, hint)
    if above is not None and not os.access(above, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: {above} is not writable")


def _sweep_stale(root: Path) -> None:
    """Remove the offload folders in `root` of runs that died without cleaning up.

    A killed run (SIGKILL, or SIGTERM from a cancelled job: no `finally` runs) leaves its
    offloaded hidden states, gigabytes for a large model, for good. A live run holds a lock
    on its folder (`_locked_temp`), so only folders nobody holds are removed."""
    if svdzoo_io.fcntl is None:  # pragma: no cover (no locks: a live run's folder looks stale)
        return
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in sorted(names):
        d = root / name
        if not _LOCKED.fullmatch(name) or d.is_symlink() or not d.is_dir():
            continue
        try:
            fd = svdzoo_io._try_lock_dir(d)
        except OSError:  # removed meanwhile, or another user's
            continue
        if fd is None:  # a live run's
            continue
        try:
            size = svdzoo_io._tree_bytes(d)
            shutil.rmtree(d, ignore_errors=True)
        finally:
            os.close(fd)
        log.warning(
            "removed %s (%.1f MiB), hidden states offloaded by a run that was killed",
            d,
            size / 2**20,
        )


def _locked_temp(root: Path | None) -> tuple[Path, int]:
    """A fresh offload folder and an fd holding its lock while the run lives."""
    while True:
        tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))
        try:
            fd = svdzoo_io._try_lock_dir(tmp)
        except FileNotFoundError:  # another run's sweep took it before the lock
            continue
        if fd is None:  # a sweep holds it and is removing it
            continue
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return tmp, fd
        except FileNotFoundError:
            pass
        os.close(fd)  # locked only once a sweep had removed it: take another


class MemoryBudget:
    """Bytes of activations that may stay in memory, shared by several stores."""

    def __init__(
        self, limit_bytes: int = DEFAULT_BUDGET_BYTES, offload_dir: str | Path | None = None
    ):
        if limit_bytes < 0:
            raise ValueError(f"memory budget must be non-negative, got {limit_bytes}")
        check_offload_dir(offload_dir)
        self.limit = int(limit_bytes)
        self.used = 0
        self.peak = 0
        self.offloaded_bytes = 0
        self._root = Path(offload_dir) if offload_dir is not None else None
        self._tmp: Path | None = None
        self._lock: int | None = None
        self._counter = 0

    def take(self, nbytes: int) -> bool:
        """Reserve `nbytes` if the budget allows; False means: offload it."""
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        self.peak = max(self.peak, self.used)
        return True

    def give(self, nbytes: int) -> None:
        self.used -= nbytes

    def new_dir(self) -> Path:
        """A fresh folder for one store's files, created lazily on first offload."""
        if self._tmp is None:
            if self._root is not None:
                self._root.mkdir(parents=True, exist_ok=True)
            _sweep_stale(self._root or Path(tempfile.gettempdir()))
            self._tmp, self._lock = _locked_temp(self._root)
            log.info("offloading activations beyond %d MiB to %s", self.limit >> 20, self._tmp)
        self._counter += 1
        d = self._tmp / f"store{self._counter}"
        d.mkdir()
        return d

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def as_budget(budget: int | MemoryBudget, offload_dir: str | Path | None = None) -> MemoryBudget:
    """Accept a byte count or a ready budget (whose accounting the caller wants to read)."""
    if isinstance(budget, MemoryBudget):
        return budget
    return MemoryBudget(budget, offload_dir)


def to_host(t: torch.Tensor) -> torch.Tensor:
    """Copy to CPU; from CUDA through pinned memory, several times faster than pageable.

    torch's caching host allocator recycles the pinned blocks, so this costs one allocation
    per distinct size; pinned memory in use is bounded by the store budget.
    """
    t = t.detach()
    if t.device.type != "cuda":
        return t.to("cpu").contiguous()
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    out.copy_(t)
    return out


def to_host_pageable(t: torch.Tensor) -> torch.Tensor:
    """Copy to ordinary CPU memory via a (recycled) pinned staging buffer.

    For results that are kept long (statistics): pinned memory should not pile up.
    """
    if t.device.type != "cuda":
        return t.detach().to("cpu").contiguous()
    out = torch.empty(t.shape, dtype=t.dtype)
    out.copy_(to_host(t))
    return out


class ActivationStore:
    """An append-only list of CPU tensors, in memory under the budget, else on disk."""

    def __init__(self, budget: MemoryBudget):
        self.budget = budget
        self._items: list[torch.Tensor | Path] = []
        self._dir: Path | None = None
        self._held = 0

    def append(self, t: torch.Tensor) -> None:
        t = to_host(t)
        nbytes = t.numel() * t.element_size()
        if self.budget.take(nbytes):
            self._items.append(t)
            self._held += nbytes
            return
        if self._dir is None:
            self._dir = self.budget.new_dir()
        path = self._dir / f"{len(self._items):06d}.safetensors"
        save_file({"x": t}, str(path))
        self.budget.offloaded_bytes += nbytes
        self._items.append(path)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self._items[i]
        return item if isinstance(item, torch.Tensor) else load_file(str(item))["x"]

    def close(self) -> None:
        """Free the memory and files; the store is empty afterwards."""
        self.budget.give(self._held)
        self._held = 0
        self._items = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
