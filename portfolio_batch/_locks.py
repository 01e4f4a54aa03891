"""Locks in the home that every thread and process using it honours: one per shard while its
batch is looked for and created, one per result file while it is downloaded.

A lock is an OS file lock (``filelock``) on ``home()/locks/<name>.lock``, taken after a lock per
path for the threads of this process. The OS releases a file lock when its process ends, however
it ends (``kill -9``, a restarted kernel), so a lock is never left held: no lease, pid or
timestamp to judge.

Assumption: the home is on a file system whose locks every process sharing it sees, a local disk
or NFSv4 with working locks (an NFS mount with ``nolock`` keeps locks to one machine: two machines
sharing such a home are not excluded from each other). Where the file system has no locks at
all, taking one is an ``InputError`` naming the lock file; it never proceeds unlocked. The thread lock makes two threads of one
process exclude each other even where the OS would let one process take its own lock twice.

    >>> import pathlib, tempfile
    >>> with home_lock(pathlib.Path(tempfile.mkdtemp()) / "demo.lock", timeout=5):
    ...     print("held")
    held
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from portfolio_batch.errors import InputError

__all__ = ["LockBusy", "home_lock"]

_thread_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


class LockBusy(Exception):
    """The lock at ``path`` was not free within the time allowed (held by another caller that
    is still working, or locks do not work on this file system)."""

    def __init__(self, path: Path, waited: float) -> None:
        super().__init__(f"{path} was held by another caller for {waited:.0f} s")
        self.path = path


@contextmanager
def home_lock(path: Path, *, timeout: float) -> Iterator[None]:
    """Hold the lock ``path`` (a file, created if missing) for the block, against every thread
    of this process and every process on the same file system; ``LockBusy`` after ``timeout``
    seconds of waiting."""
    with _guard:
        local = _thread_locks.setdefault(os.path.abspath(path), threading.Lock())
    started = time.monotonic()
    if not local.acquire(timeout=timeout):
        raise LockBusy(path, timeout)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A new object per call: one shared object counts re-entries per thread and would let
        # a second caller in while the first still holds it.
        lock = _file_lock(path, max(0.0, timeout - (time.monotonic() - started)))
        try:
            lock.acquire()
        except filelock.Timeout:
            raise LockBusy(path, time.monotonic() - started) from None
        except (NotImplementedError, OSError) as exc:
            raise InputError(
                f"Cannot lock {path} ({exc}): the home's file system has no working file locks. "
                "Set PORTFOLIO_BATCH_HOME to a directory on a local disk (or NFSv4 with locking)."
            ) from exc
        try:
            yield
        finally:
            lock.release()
    finally:
        local.release()


def _file_lock(path: Path, timeout: float) -> filelock.BaseFileLock:
    try:
        # filelock 4 would fall back to a marker file where flock is missing: a marker is not
        # released when its process dies, so refuse instead (filelock 3 always refuses).
        return filelock.FileLock(path, timeout=timeout, fallback_to_soft=False)  # type: ignore[call-arg]
    except TypeError:
        return filelock.FileLock(path, timeout=timeout)
