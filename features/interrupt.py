"""Ctrl-C and SIGTERM become a clean stop at the next batch boundary."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


_early: list[str] = []  # a SIGINT that came before the stop handlers, whatever became of its KeyboardInterrupt


def remember_interrupts() -> None:
    """Make SIGINT raise ``KeyboardInterrupt`` as usual, and remember that it came.

    A library import that catches every exception (a bare ``except:``) can swallow the
    ``KeyboardInterrupt`` of a Ctrl-C pressed while it loads; the run would then go on as
    if nothing had been asked. Remembered, the request still stops the run at its first
    batch boundary (:func:`stop_between_batches`). A no-op outside the main thread.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _remember_and_raise)


def _remember_and_raise(signum, frame) -> None:
    _early.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


class Interrupted(Exception):
    """The run stopped at a batch boundary because a signal asked it to."""


class StopRequest:
    """Set by the first SIGINT/SIGTERM; a second one interrupts at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt  # asked twice: stop now (the journal is safe at any byte)
        self.signal_name = signal.Signals(signum).name

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop was requested (call it between batches)."""
        if self.signal_name is not None:
            raise Interrupted(f"stopped by {self.signal_name} after the last committed batch")


@contextlib.contextmanager
def stop_between_batches() -> Iterator[StopRequest]:
    """Install the handlers for the ``with`` block and restore the previous ones after.

    Outside the main thread signals cannot be caught; the request then never fires
    and the default behaviour stays.
    """
    request = StopRequest()
    if _early:
        request.signal_name = _early[0]
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request._handle) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
