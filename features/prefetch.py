"""Decoding in a background thread while the model runs: a bounded queue of ready batches.

PIL decodes and resizes with the GIL released, so a thread overlaps that work with the
forward pass without a second process (a DataLoader worker pickles every tensor back).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failed:
    """An exception raised by the producer, handed over to be raised in the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(items: Iterable[T], depth: int = 2, thread_setup: Callable[[], None] | None = None) -> Iterator[T]:
    """Yield ``items`` in order while a thread produces up to ``depth`` of them ahead.

    Parameters
    ----------
    items : iterable
        Consumed in the thread only.
    depth : int
        Ready items held at most (memory: ``depth`` batches).
    thread_setup : callable, optional
        Called first in the thread (e.g. ``torch.set_num_threads(1)``: the cores belong to
        the forward pass).

    Yields
    ------
    The items of ``items``. An exception raised while producing one is raised here, in
    its place. Closing the generator (use ``contextlib.closing``) stops the thread and
    waits for it, so no decode outlives the loop.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if thread_setup is not None:
                thread_setup()
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which decides
            put(_Failed(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="decode", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
