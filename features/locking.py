"""One writer per output: an advisory lock beside the output file, released by the kernel when its holder dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from typing import Iterator

LOCK_SUFFIX = ".lock"


class LockError(Exception):
    """The output cannot be locked; ``str(exc)`` is a one-line reason."""


class OutputLocked(LockError):
    """Another live process is writing the same output; ``str(exc)`` names it."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def output_lock(target: str) -> Iterator[str]:
    """Hold an exclusive lock on ``target + ".lock"`` for the ``with`` block.

    The lock file records the holder (``pid N on host H``) and is removed on release.
    ``flock`` locks belong to the open file, so the kernel drops the lock when the
    process dies however it dies (``kill -9`` included): a stale lock file never blocks
    a later run.

    Parameters
    ----------
    target : str
        The output being protected (a feature file, a shard, a head or model folder).

    Yields
    ------
    str
        The lock file's path.

    Raises
    ------
    OutputLocked
        Another process holds the lock.
    LockError
        The lock file cannot be created (missing or read-only folder).
    """
    path = target + LOCK_SUFFIX
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LockError(f"cannot create {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputLocked(f"{target} is being written by {holder}; wait for that run to finish "
                               "or choose another output") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed this file between our open and lock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # before unlocking: a process that opened this inode sees it unlinked and retries
        os.close(fd)
