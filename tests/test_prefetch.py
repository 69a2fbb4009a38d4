"""Decoding threads: the queue of the decode thread and the pool that decodes a batch at a time.

Order, errors handed over, and threads that stop when the loop does."""

import contextlib
import threading

import pytest

from features.prefetch import pooled_batches, prefetched


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


def _decode_threads():
    return [t for t in threading.enumerate() if t.name.startswith("decode")]


def test_pooled_batches_come_in_order_and_the_pool_ends():
    items = [i * i for i in range(23)]
    batches = list(pooled_batches(items, batch_size=5, threads=3))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sum(batches, []) == items
    assert not _decode_threads()


def test_an_item_that_fails_in_the_pool_is_raised_and_the_pool_ends():
    class Items:
        def __len__(self):
            return 10

        def __getitem__(self, i):
            if i == 6:
                raise OSError("disk gone")
            return i

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for batch in pooled_batches(Items(), batch_size=4, threads=2):
            seen.append(batch)
    assert seen == [[0, 1, 2, 3]]
    assert not _decode_threads()


def test_a_batch_is_produced_only_when_asked_for():
    produced = []

    class Items:
        def __len__(self):
            return 100

        def __getitem__(self, i):
            produced.append(i)
            return i

    with contextlib.closing(pooled_batches(Items(), batch_size=8, threads=2)) as batches:
        for batch in batches:
            if batch[0] == 8:
                break
    assert sorted(produced) == list(range(16))  # two batches asked for, nothing decoded ahead
    assert not _decode_threads()
