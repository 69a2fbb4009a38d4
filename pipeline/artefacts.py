"""Head and model folders appear whole or not at all: written under a staging name, renamed when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator

from features.locking import output_lock

STAGING_SUFFIX = ".partial"


@contextlib.contextmanager
def staged_folder(out_dir: str, keep_staging: bool = False) -> Iterator[str]:
    """Yield a staging folder that becomes ``out_dir`` when the ``with`` block succeeds.

    The output is locked for the whole block (a second run on the same folder is refused,
    :class:`features.locking.OutputLocked`). The staging folder is ``out_dir + ".partial"``;
    an existing ``out_dir`` is replaced only once the new one is complete, so a reader
    sees the old folder or the new one, never a mix.

    Parameters
    ----------
    out_dir : str
        The folder to produce.
    keep_staging : bool
        Keep an existing staging folder (it holds a checkpoint to resume from) instead of
        clearing it; on failure the staging folder is kept either way.

    Raises
    ------
    features.locking.LockError
        Another process writes ``out_dir``, or its parent folder is missing or read-only.
    """
    out_dir = os.path.normpath(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = out_dir + STAGING_SUFFIX
    with output_lock(out_dir):
        if os.path.isdir(staging) and not keep_staging:
            shutil.rmtree(staging)  # left by a run that died; we hold the lock, so nobody else uses it
        os.makedirs(staging, exist_ok=True)
        yield staging
        if os.path.isdir(out_dir):
            old = f"{out_dir}.replaced-{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
