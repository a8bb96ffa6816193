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
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]

YOUNG_THRESHOLD = 10_000
"""Allocations between young collections (the interpreter's default is 700)."""


def settle_heap() -> None:
    """Freeze the objects that exist now and space out young collections.

    Call it once, when the process is set up and before it starts draining.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
