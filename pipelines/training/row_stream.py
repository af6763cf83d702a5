"""A training worker's micro-batches in schedule order: rows read by key and collated into `TrainingBatch`es a few
micro-batches ahead of the step by one background thread (no Ray).

The rows are preprocessed latents, so reading them is light work that a thread beside the step hides. (A Ray Data
pipeline did this before: over a whole run its streaming executor's scheduling loop kept most of a core and the GIL
busy, which made a toy step on 2 CPU cores 3x slower (6.2 s against 2.1 s with this thread), and its read tasks
needed CPUs beside the workers' or the job hung.)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

import torch

from models.backbones import BackboneAdapter
from pipelines.io.filesystem import resolve_uri
from pipelines.io.row_reader import keys_table, read_rows
from pipelines.io.training_rows import TrainingBatch, training_batch
from pipelines.training.schedule import RowPlan, step_rows

Item = TypeVar("Item")
_POLL_S = 0.5  # how often a blocked producer checks whether the consumer has gone


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(items: Iterator[Item], depth: int) -> Iterator[Item]:
    """`items`, produced up to `depth` ahead in a daemon thread (`depth` 0: in the caller's thread). An exception
    in the producer is raised here at its place in the order; closing this iterator stops the producer."""
    if depth == 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Failed(error))
            return
        put(end)

    threading.Thread(target=produce, name="row-prefetch", daemon=True).start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


def scheduled_batches(
    plan: RowPlan, seed: int, steps: range, rank: int, world_size: int, micro_batch: int, accumulation: int,
    adapter: BackboneAdapter, device: torch.device, prefetch: int,
) -> Iterator[list[TrainingBatch]]:
    """Worker `rank`'s micro-batches of each optimizer step in `steps`, grouped by step, on `device` (warp
    operators on the CPU, where the step's generator draws)."""
    filesystem, _ = resolve_uri(plan.rows_uri)

    def micro_batches() -> Iterator[TrainingBatch]:
        for step in steps:
            for keys in step_rows(plan.train, seed, step, rank, world_size, micro_batch, accumulation):
                yield training_batch(read_rows(filesystem, keys_table(keys)), adapter, device, operator_device="cpu")

    batches = prefetched(micro_batches(), prefetch)
    for _ in steps:
        yield [next(batches) for _ in range(accumulation)]
