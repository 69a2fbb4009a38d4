"""Decoding in threads: a pool that decodes each batch across the cores between forward
passes, or a background thread that runs a bounded queue of batches ahead of the model.

PIL decodes and torch resizes with the GIL released, so threads share that work without a
second process (a DataLoader worker pickles every tensor back).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
# How extraction decodes without DataLoader workers: between forward passes in the main
# thread ("turn") or across the cores ("pool"), or one batch ahead in a thread ("thread").
DECODE_MODES = ("turn", "pool", "thread")
_DONE = object()


def single_torch_thread(_worker_id: int = 0) -> None:
    """Run torch on one thread in the calling thread (or DataLoader worker, whose id is ignored).

    Transforms in a decode thread or worker must not start their own thread pool (OpenMP's
    thread count is per thread): the cores belong to the forward pass.
    """
    import torch

    torch.set_num_threads(1)


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


def pooled_batches(items: Sequence[T], batch_size: int, threads: int,
                   thread_setup: Callable[[], None] | None = None) -> Iterator[list[T]]:
    """Yield ``items`` in order, in lists of ``batch_size``, each list produced by ``threads`` threads at once.

    A batch is produced only when the consumer asks for it, so the pool and the consumer
    take turns: on a machine with few cores, the decode and the forward pass each get
    every core in turn instead of contending for them.

    Parameters
    ----------
    items : sequence
        Indexed (``items[i]``) in the pool's threads; a map-style ``Dataset`` fits.
    batch_size : int
        Items per yielded list (the last may be shorter).
    threads : int
        Threads of the pool.
    thread_setup : callable, optional
        Called first in each thread (e.g. ``torch.set_num_threads(1)``).

    Yields
    ------
    list
        ``[items[i] for i in range(start, start + batch_size)]``. An exception raised by
        one item is raised here. Closing the generator shuts the pool down and waits for it.
    """
    with ThreadPoolExecutor(threads, thread_name_prefix="decode", initializer=thread_setup) as pool:
        for start in range(0, len(items), batch_size):
            yield list(pool.map(items.__getitem__, range(start, min(start + batch_size, len(items)))))
