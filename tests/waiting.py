"""Fault tests wait for a condition, never a fixed time: a run is signalled once it has committed work."""

from __future__ import annotations

import subprocess
import time

from features.journal import committed_images


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
