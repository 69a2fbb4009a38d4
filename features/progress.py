"""A dependency-free progress line with images/s and ETA, written to stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """``75.0`` -> ``'1:15'``; hours shown when needed."""
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts items towards a total and redraws a status line.

    On a terminal the line is redrawn in place at most ten times a second; in a log
    (not a TTY) a new line is printed every ``log_every`` seconds and at the end.

    Parameters
    ----------
    total : int
        Items expected.
    label : str
        Shown at the start of the line.
    unit : str
        Plural unit name for the rate, e.g. ``"img"``.
    enabled : bool
        ``False`` silences it entirely.
    """

    def __init__(self, total: int, label: str, unit: str = "img", enabled: bool = True,
                 stream: TextIO | None = None, log_every: float = 10.0) -> None:
        self.total, self.label, self.unit, self.enabled = total, label, unit, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every = log_every
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.rate
        eta = format_seconds((self.total - self.done) / rate) if rate > 0 else "?"
        return f"{self.label}: {self.done}/{self.total} ({pct:3.0f}%) {rate:6.1f} {self.unit}/s ETA {eta}"

    def update(self, n: int) -> None:
        """Add ``n`` finished items and redraw if it is time to."""
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        interval = 0.1 if self.tty else self.log_every
        if now - self._last_draw >= interval or self.done >= self.total:
            self._last_draw = now
            self.stream.write(("\r" + self.line() + "\033[K") if self.tty else self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Finish the line on a terminal."""
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
