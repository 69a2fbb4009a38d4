"""The extraction forward pass, run eagerly or through ``torch.compile`` where its warm-up is repaid.

``torch.compile`` costs a warm-up (tracing and C++ code generation) before its first batch and
then runs each batch faster. Measured on 2 CPU cores with BatchNorm folded (BENCHMARKS.md
section 16, two runs at batch 32 and two at 16, the CPU's default, the last with the bf16 weights
cast once): a cold warm-up of 13 to 25 s, and 1.03x (ResNet-50 fp32) to 1.45x (Lite0) the eager
forward rate in fp32, 1.35x (Lite0) to 1.64x (ResNet-50) in bf16. ``auto`` therefore times the
first eager batches of the run, estimates the forward time still ahead, and compiles only when
the time the compiled model would save, at the smallest speed-up measured for the precision,
exceeds the warm-up it costs. A compiled model keeps one input shape (a new shape is a new
warm-up), so it runs in chunks of the batch size, the last one padded and the padding dropped."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from features.devices import autocast
from features.hooks import FeatureCapture

COMPILE_MODES = ("auto", "on", "off")
# Conservative CPU figures for the rule of ``auto``: above the slowest warm-up, the smallest speed-up per precision.
CPU_WARMUP_SECONDS = 30.0
CPU_SPEEDUP = {"fp32": 1.03, "bf16": 1.35}
# Eager batches timed before ``auto`` decides; the first is left out (oneDNN builds its kernels there).
_TIMED_BATCHES = 2


def compile_pays(mode: str, device: torch.device, precision: str, forward_seconds_left: float) -> tuple[bool, str]:
    """Whether to compile, and why, given the eager forward time still ahead.

    Parameters
    ----------
    mode : {"auto", "on", "off"}
    device : torch.device
        ``auto`` decides only on the CPU, where the warm-up and speed-up were measured; it
        stays eager on other devices.
    precision : str
        The autocast precision, whose measured speed-up the rule uses.
    forward_seconds_left : float
        Estimated eager forward-pass time of the images not yet extracted.

    Returns
    -------
    (bool, str)
        The choice and a note for the run's summary.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"--compile is auto, on or off, got {mode!r}")
    if mode != "auto":
        return mode == "on", "compile: on (asked for)" if mode == "on" else ""
    if device.type != "cpu":
        return False, f"compile: off (auto compiles only on the CPU, where its warm-up was measured; --compile on to try {device.type})"
    saved = forward_seconds_left * (1 - 1 / CPU_SPEEDUP.get(precision, 1.0))
    verdict = "on" if saved > CPU_WARMUP_SECONDS else "off"
    return saved > CPU_WARMUP_SECONDS, (f"compile: {verdict} (auto: about {saved:.0f} s to save on "
                                        f"{forward_seconds_left:.0f} s of forward passes left, "
                                        f"against a warm-up of about {CPU_WARMUP_SECONDS:.0f} s)")


@dataclass
class BatchForward:
    """Runs the backbone on batches and returns their pooled features, compiling once it pays.

    Parameters
    ----------
    model : nn.Module
        The backbone, feature hook attached by the caller's ``capture_features``.
    mode : {"auto", "on", "off"}
    device : torch.device
    precision : str
        Autocast precision (``features.devices.resolve_precision``).
    rows_per_batch : int
        Rows the compiled model takes at a time (the batch size): a batch with augmented
        views runs in several such chunks, and a short last chunk is padded.
    rows_left : int
        Rows this run still has to extract (every split, augmented views included), for the
        rule of ``auto``.
    """

    model: nn.Module
    mode: str
    device: torch.device
    precision: str
    rows_per_batch: int
    rows_left: int
    notes: list[str] = field(default_factory=list)
    _compiled: Callable | None = None
    _decided: bool = False
    _timed: list[tuple[int, float]] = field(default_factory=list)  # (rows, seconds) of eager batches

    def __post_init__(self) -> None:
        if self.mode != "auto":
            self._decide(0.0)

    def __call__(self, x: torch.Tensor, capture: FeatureCapture) -> torch.Tensor:
        """Features ``(rows, D)`` of the batch ``x``."""
        if self._compiled is not None:
            return self._run_compiled(x, capture)
        start = time.perf_counter()
        with autocast(self.device, self.precision):
            self.model(x)
        features = capture.pop()
        self.rows_left -= len(x)
        if not self._decided:
            self._timed.append((len(x), time.perf_counter() - start))
            if len(self._timed) > _TIMED_BATCHES:
                timed = self._timed[1:]
                per_row = sum(s for _, s in timed) / sum(n for n, _ in timed)
                self._decide(per_row * max(0, self.rows_left))
        return features

    def _decide(self, forward_seconds_left: float) -> None:
        chosen, note = compile_pays(self.mode, self.device, self.precision, forward_seconds_left)
        self._decided = True
        if note:
            self.notes.append(note)
        if chosen:
            self._compiled = torch.compile(self.model, dynamic=False)

    def _run_compiled(self, x: torch.Tensor, capture: FeatureCapture) -> torch.Tensor:
        # One input shape for the compiled model: chunks of rows_per_batch rows, the last one padded.
        pieces = []
        for start in range(0, len(x), self.rows_per_batch):
            chunk = x[start:start + self.rows_per_batch]
            rows = len(chunk)
            if rows < self.rows_per_batch:
                pad = chunk.new_zeros((self.rows_per_batch - rows, *chunk.shape[1:]))
                chunk = torch.cat([chunk, pad]).contiguous(memory_format=torch.channels_last)
            try:
                with autocast(self.device, self.precision):
                    self._compiled(chunk)
            except Exception as exc:  # no C++ compiler, an unsupported operator: carry on eagerly, and say so
                self._compiled = None
                first_line = (str(exc).splitlines() or [""])[0][:160]
                self.notes.append(f"warning: torch.compile failed ({type(exc).__name__}: {first_line}); "
                                  "extracted eagerly instead")
                with autocast(self.device, self.precision):
                    self.model(x)
                return capture.pop()
            pieces.append(capture.pop()[:rows])
        return torch.cat(pieces)
