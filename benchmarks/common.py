"""Shared helpers: run a command and measure its wall time and peak memory, describe the machine."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HYMENOPTERA = os.path.abspath(os.path.join(REPO, "..", "shared", "data", "hymenoptera_data"))


@dataclass
class Measured:
    """One command's outcome."""

    command: str
    seconds: float
    peak_rss_mb: float
    stdout: str


def run_measured(args: list[str], cwd: str = REPO, env: dict | None = None) -> Measured:
    """Run ``python ARGS...`` as a child process (``env`` added to the environment); wall time and
    that child's peak RSS.

    Peak RSS comes from ``wait4``'s resource usage of that one child, so earlier
    children do not leak into it.
    """
    cmd = [sys.executable, *args]
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", **(env or {}))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return Measured(shown_command(args), seconds, usage.ru_maxrss / 1024.0, stdout)


class ExtractionTotals(NamedTuple):
    """Sums over the splits of one ``run_extract.py --report``: images processed, and seconds in the extraction
    loops, of which waiting for decoded images and in forward passes."""

    images: int
    seconds: float
    waiting: float
    forward: float


def extraction_totals(report_path: str) -> ExtractionTotals:
    """The extraction loops' totals from ``run_extract.py --report``."""
    with open(report_path, encoding="utf-8") as fh:
        splits = json.load(fh)["splits"]
    return ExtractionTotals(*(sum(s[key] for s in splits)
                              for key in ("processed", "seconds", "waiting_seconds", "forward_seconds")))


def head_val_accuracy(head_dir: str) -> tuple[float, int]:
    """Val accuracy and its number of images, from a head folder's ``report.json``."""
    with open(os.path.join(head_dir, "report.json"), encoding="utf-8") as fh:
        val = json.load(fh)["splits"]["val"]
    return val["accuracy"], val["n"]


def shown_command(args: list[str]) -> str:
    """The command as a user would type it from the repository root."""
    return "python " + shlex.join([os.path.relpath(a, REPO) if os.path.isabs(a) else a for a in args])


def machine_description() -> list[str]:
    """Lines describing the CPU, cores, memory and library versions."""
    import torch

    cpu = "unknown CPU"
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            text = fh.read()
        cpu = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = ", ".join(f for f in ("avx512_bf16", "amx_bf16", "avx512f") if f in text)
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores visible ({flags or 'no bf16 flags'}), {mem_gb:.0f} GiB RAM, no GPU used",
        f"- Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads",
    ]


def better_same_worse(diff) -> str:
    """``"B / S / W"``: how many paired runs gained, tied or lost, from per-run differences counted in images
    (within half an image is a tie)."""
    import numpy as np

    diff = np.asarray(diff)
    return f"{int((diff > 0.5).sum())} / {int((abs(diff) < 0.5).sum())} / {int((diff < -0.5).sum())}"
