"""The worker's garbage collector, tuned for draining large batches.

A batch of a thousand transactions allocates a few hundred thousand
containers that live as long as the batch, so most of them survive the young
generations and each full collection then walks the whole heap: the
interpreter's start-up objects (modules, SQLAlchemy's and pydantic's
schemas) as well as the batch. Measured on the example schema at 2,000 per
batch, the collector took a fifth of the drain's CPU. The worker therefore
freezes what exists once it is set up (those objects live as long as the
process) and collects the young generation less often; a library embedded in
someone else's service leaves their collector alone.

How much less often follows the largest batch. The young generation's count
is containers allocated less those freed, so it only reaches its threshold
when that many stay alive at once: a batch's objects, and the next one's
claimed ahead, all survive until the batch is settled, and then the count
falls back. Below that peak, every batch triggers collections that walk
objects which are all alive (and a middle collection every tenth, walking
them again): 6 to 27 us of CPU per transaction drained (issue #23, example
schema, batches of 1,000 and 3,000). A threshold above the peak (about 100
containers per transaction of the largest batch: none of a 4,000-transaction
drain at batch 1,000 reached it) leaves collecting to the rare cycle that
does, and to garbage in reference cycles, which still goes, later.
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]

YOUNG_THRESHOLD = 10_000
"""The fewest allocations between young collections (the interpreter's default is 700)."""

CONTAINERS_PER_TRANSACTION = 100
"""Containers a batch keeps alive per transaction, about (example schema: 50 to 100)."""


def young_threshold(largest_batch: int) -> int:
    """Allocations between young collections for batches of up to ``largest_batch``."""
    return max(YOUNG_THRESHOLD, CONTAINERS_PER_TRANSACTION * largest_batch)


def settle_heap(largest_batch: int = 100) -> None:
    """Freeze the objects that exist now and space out young collections.

    Call it once, when the process is set up and before it starts draining.

    Args:
        largest_batch: The largest batch the worker may claim.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold(largest_batch), middle, old)
