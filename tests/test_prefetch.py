"""The decode thread's queue: order, errors handed over, and a thread that stops when the loop does."""

import contextlib
import threading

import pytest

from features.prefetch import prefetched


def test_items_arrive_in_order_and_the_thread_ends():
    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))
    assert not [t for t in threading.enumerate() if t.name == "decode"]


def test_an_error_in_the_producer_is_raised_in_its_place():
    def items():
        yield 1
        yield 2
        raise OSError("disk gone")

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(items()):
            seen.append(item)
    assert seen == [1, 2]


def test_closing_early_stops_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    with contextlib.closing(prefetched(items(), depth=2)) as batches:
        for item in batches:
            if item == 3:
                break
    assert len(produced) <= 4 + 2 + 1  # the items taken, the queue, one in hand: nothing after the close
    assert not [t for t in threading.enumerate() if t.name == "decode"]
