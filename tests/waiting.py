"""Fault tests wait for a condition, never a fixed time: a run is signalled once it has committed work."""

from __future__ import annotations

import os
import subprocess
import time

import h5py


def committed_images(partial: str, split: str) -> int:
    """Images of ``split`` committed to a partial file so far (0 while it cannot be read yet)."""
    if not os.path.exists(partial):
        return 0
    try:
        # The writer holds the file open; read without HDF5's own lock, and retry on a torn read.
        with h5py.File(partial, "r", locking=False) as h5:
            return int(h5[split].attrs["done_images"])
    except (OSError, KeyError, ValueError):
        return 0


def wait_for_committed(partial: str, split: str, at_least: int, proc: subprocess.Popen, timeout: float = 180) -> int:
    """Poll until ``at_least`` images of ``split`` are committed; fail if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = committed_images(partial, split)
        if done >= at_least:
            return done
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before committing {at_least} images")
        time.sleep(0.02)
    raise AssertionError(f"{partial}: fewer than {at_least} images committed after {timeout:.0f} s")
