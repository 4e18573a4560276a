"""Taking work off a queue in batches, for the threads that group it (the message
store's group commit, the coalescing task publisher)."""

from __future__ import annotations

import queue
from typing import TypeVar

T = TypeVar("T")


def take_batch(source: queue.Queue[T | None], first: T, limit: int) -> list[T]:
    """``first`` and whatever else is already waiting, up to ``limit`` items. A ``None``
    (the stop sentinel) ends the batch and is put back, so the consumer stops after
    handling it."""
    batch = [first]
    while len(batch) < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            break
        if item is None:
            source.put(None)
            break
        batch.append(item)
    return batch
