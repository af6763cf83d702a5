"""The training workers' row stream: order kept, read ahead, producer errors raised in place, closing stops it."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.training.row_stream import prefetched


def test_prefetched_keeps_order_and_reads_ahead() -> None:
    produced = []

    def items():
        for index in range(6):
            produced.append(index)
            yield index

    stream = prefetched(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.2)
    assert produced == [0, 1, 2, 3]  # the consumed item, two waiting in the queue, one blocked on a full queue
    assert list(stream) == [1, 2, 3, 4, 5]
    assert list(prefetched(iter(range(3)), depth=0)) == [0, 1, 2]


def test_a_producer_error_is_raised_at_its_place() -> None:
    def items():
        yield 1
        raise OSError("rows: cannot read part-0.parquet")

    stream = prefetched(items(), depth=3)
    assert next(stream) == 1
    with pytest.raises(OSError, match="cannot read part-0"):
        next(stream)


def test_closing_the_stream_stops_the_producer() -> None:
    def items():
        index = 0
        while True:
            yield index
            index += 1

    before = threading.active_count()
    stream = prefetched(items(), depth=1)
    next(stream)
    stream.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() == before
