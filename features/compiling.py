"""The extraction forward pass, run eagerly or through ``torch.compile`` where its warm-up is repaid.

``torch.compile`` costs a warm-up (tracing and C++ code generation) before its first batch and
then runs each batch faster. Measured on 2 CPU cores with BatchNorm folded (BENCHMARKS.md
section 16): a cold warm-up of 15 to 25 s, and 1.07x (ResNet-50 fp32) to 1.8x (ResNet-50 bf16)
the eager forward rate, 1.5x to 1.6x for EfficientNet-Lite0. ``auto`` therefore times the first
eager batches of the run, estimates the forward time still ahead, and compiles only when the
time the compiled model would save exceeds the warm-up it costs. A compiled model keeps one
batch shape (a new shape is a new warm-up), so a short last batch is padded and the padding
dropped."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from features.devices import autocast
from features.hooks import FeatureCapture

COMPILE_MODES = ("auto", "on", "off")
# Conservative CPU figures for the rule of ``auto`` (the slower warm-up, the smaller speed-up measured).
CPU_WARMUP_SECONDS = 30.0
CPU_SPEEDUP = 1.4
# Eager batches timed before ``auto`` decides; the first is left out (oneDNN builds its kernels there).
_TIMED_BATCHES = 2


def compile_pays(mode: str, device: torch.device, forward_seconds_left: float) -> tuple[bool, str]:
    """Whether to compile, and why, given the eager forward time still ahead.

    Parameters
    ----------
    mode : {"auto", "on", "off"}
    device : torch.device
        ``auto`` decides only on the CPU, where the warm-up and speed-up were measured; it
        stays eager on other devices.
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
    saved = forward_seconds_left * (1 - 1 / CPU_SPEEDUP)
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
    images_left : int
        Images this run still has to extract (every split), for the rule of ``auto``.
    """

    model: nn.Module
    mode: str
    device: torch.device
    precision: str
    rows_per_batch: int
    images_left: int
    notes: list[str] = field(default_factory=list)
    _compiled: Callable | None = None
    _decided: bool = False
    _timed: list[tuple[int, float]] = field(default_factory=list)  # (images, seconds) of eager batches

    def __post_init__(self) -> None:
        if self.mode != "auto":
            self._decide(0.0)

    def __call__(self, x: torch.Tensor, images: int, capture: FeatureCapture) -> torch.Tensor:
        """Features ``(rows, D)`` of the batch ``x``, which holds ``images`` images."""
        if self._compiled is not None:
            return self._run_compiled(x, capture)
        start = time.perf_counter()
        with autocast(self.device, self.precision):
            self.model(x)
        features = capture.pop()
        self.images_left -= images
        if not self._decided:
            self._timed.append((images, time.perf_counter() - start))
            if len(self._timed) > _TIMED_BATCHES or self.images_left <= 0:
                timed = self._timed[1:] or self._timed
                per_image = sum(s for _, s in timed) / max(1, sum(n for n, _ in timed))
                self._decide(per_image * self.images_left)
        return features

    def _decide(self, forward_seconds_left: float) -> None:
        chosen, note = compile_pays(self.mode, self.device, forward_seconds_left)
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
                self.notes.append(f"warning: torch.compile failed ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:160]}); extracted eagerly instead")
                with autocast(self.device, self.precision):
                    self.model(x)
                return capture.pop()
            pieces.append(capture.pop()[:rows])
        return torch.cat(pieces)
