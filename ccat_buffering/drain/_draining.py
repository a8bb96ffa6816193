"""Running a processor's batches until its buffer is empty, for tools and tests.

:meth:`~ccat_buffering.drain.processor.BackgroundProcessor.drain` settles the
queue now, where the background loop would take its time: it waits out retry
holds, outage pauses and an unreachable buffer while its time allows, and
returns with every batch settled.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ccat_buffering.buffer.retry import describe_error
from ccat_buffering.drain._stopping import raise_if_cancelling
from ccat_buffering.drain.processor_state import ProcessorState
from ccat_buffering.errors import BackendError

if TYPE_CHECKING:
    from ccat_buffering.drain.processor import BackgroundProcessor


async def drain_buffer(processor: BackgroundProcessor, timeout: float) -> bool:
    """Run ``processor``'s batches until its buffer is empty or ``timeout`` seconds pass.

    Returns:
        Whether the buffer is empty (no waiting entries, none in flight).
    """
    deadline = processor.clock() + timeout
    # Between its own batches the drain settles one behind the next one's
    # round trip, as the loop does; it returns with everything settled.
    overlap, processor._overlap = processor._overlap, True
    try:
        while processor.clock() < deadline:
            try:
                await processor.run_once()
                if processor._prefetched and processor.state is ProcessorState.RUNNING:
                    continue  # the next batch is claimed already: not empty, nothing to wait for
                stats = await processor.manager.backend.buffer.stats()
            except BackendError as exc:
                raise_if_cancelling()
                # The buffer went away (a restart leaves dead pooled
                # connections): waited out as the loop does; what is in
                # flight is recovered before the next claim.
                processor.log.warning("buffer unreachable: %s", describe_error(exc))
                await asyncio.sleep(
                    min(processor.poll_interval, max(deadline - processor.clock(), 0))
                )
                continue
            if stats.depth == 0 and stats.in_flight == 0:
                return True
            if processor.state is ProcessorState.STANDBY:
                return False
            if processor.state is ProcessorState.PAUSED:
                await asyncio.sleep(
                    min(processor.outage_delay(), max(deadline - processor.clock(), 0))
                )
            elif stats.held_until is not None:
                await asyncio.sleep(
                    min(processor.poll_interval, max(deadline - processor.clock(), 0))
                )
        return False
    finally:
        processor._overlap = overlap
        if not overlap:
            await processor._settled()
