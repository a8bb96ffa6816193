"""A site's life: starting its background work, stopping it in bounded time, closing.

At a secondary site the processor drains, the buffer watch looks for lost
state and the ledger is pruned; at every site the replication tracker
confirms commits, led by the holder of the site's lease. :class:`Lifecycle`
is the part of :class:`~ccat_buffering.site.coordinator.BufferingCoordinator`
that starts and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Self

from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer.protocols import Backend
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.confirm.replication import ReplicationTracker
from ccat_buffering.confirm.waiting import StatusWatch
from ccat_buffering.drain._stopping import finish_or_cancel
from ccat_buffering.drain.ledger_pruning import prune_periodically
from ccat_buffering.drain.processor import STOP_GRACE, BackgroundProcessor
from ccat_buffering.errors import BackendError
from ccat_buffering.logs import SiteLogger
from ccat_buffering.observe.buffer_loss import BufferWatch, watch_buffer
from ccat_buffering.observe.health import NO_REPLICA_NOTICE

__all__ = ["Lifecycle"]


class Lifecycle:
    """Start, stop and close a site's background work (a base of the coordinator)."""

    settings: BufferingSettings
    backend: Backend
    engine: AsyncEngine
    read_engine: AsyncEngine | None
    processor: BackgroundProcessor
    tracker: ReplicationTracker
    watch: BufferWatch
    watch_interval: float
    statuses: StatusWatch
    background: set[asyncio.Task[None]]
    _watch_task: asyncio.Task[None] | None
    _tracker_task: asyncio.Task[None] | None
    _prune_task: asyncio.Task[None] | None
    _owns: bool
    _start_on_enter: bool

    async def _leads(self) -> bool:
        """Whether this process confirms the site's replication: the lease holder does.

        At a secondary site the draining processor holds the site's lease; at a
        main site nothing drains, and the tracker takes the same lease itself,
        so that one process per site marks ``replicated`` and counts it once.
        """
        lease = self.processor.lease
        if self.settings.site_type == "secondary":
            return lease.held
        try:
            if lease.held and await lease.still_held():
                return True
            lease.held = False
            return await lease.take()
        except BackendError:
            return False

    def start(self) -> None:
        """Start the processor (secondary sites) and the replication tracker.

        Services do not call it (they submit and read; the worker drains):
        see :func:`ccat_buffering.web.fastapi.lifespan`.
        """
        if self.settings.site_type == "secondary":
            if not self.settings.replica_url:
                SiteLogger(__name__, self.backend.site).warning(NO_REPLICA_NOTICE)
            self.processor.start()
            if self.watch.supported and (self._watch_task is None or self._watch_task.done()):
                self._watch_task = asyncio.create_task(self._watching(), name="buffer-watch")
            pruning = self.settings.ledger and self.settings.ledger_prune_interval > 0
            if pruning and (self._prune_task is None or self._prune_task.done()):
                self._prune_task = asyncio.create_task(
                    prune_periodically(
                        self.engine,
                        self.backend,
                        retention=self.settings.ledger_retention,
                        interval=self.settings.ledger_prune_interval,
                        batch_size=self.settings.ledger_prune_batch,
                    ),
                    name="ledger-pruning",
                )
        if self._tracker_task is None or self._tracker_task.done():
            self._tracker_task = asyncio.create_task(self.tracker.run(), name="replication-tracker")

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the processor after its batch, and the tracker after its poll, in bounded time.

        Returns within ``grace`` plus :data:`~ccat_buffering.drain._stopping.CANCEL_BOUND`
        seconds whatever the buffer watch, the link or the buffer is doing:
        what does not finish in time is cancelled (see :mod:`ccat_buffering.drain._stopping`).

        Args:
            grace: Seconds the processor's batch and the tracker's poll may
                take to finish before they are cancelled.
        """
        log = SiteLogger(__name__, self.backend.site)
        tasks = [*self.background]
        self.background.clear()
        watch, self._watch_task = self._watch_task, None
        tracker, self._tracker_task = self._tracker_task, None
        prune, self._prune_task = self._prune_task, None
        self.tracker.stop()
        stopping: list[Coroutine[Any, Any, object]] = [
            finish_or_cancel(task, log=log) for task in tasks
        ]
        for job in (watch, prune):
            if job is not None:
                stopping.append(finish_or_cancel(job, log=log))
        if tracker is not None:
            stopping.append(finish_or_cancel(tracker, grace=grace, log=log))
        stopping.append(self.processor.stop(grace))
        for outcome in await asyncio.gather(*stopping, return_exceptions=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, Exception):
                log.error("a background task failed while stopping: %s", outcome)
        if self.settings.site_type == "main":
            with contextlib.suppress(BackendError):
                await self.processor.lease.release()

    async def _watching(self) -> None:
        """Check the buffer against the main database at start and every second."""
        await watch_buffer(self.watch, self.watch_interval)

    async def aclose(self) -> None:
        """Stop, then close what the coordinator owns."""
        await self.stop()
        await self.statuses.aclose()
        if self._owns:
            await self.backend.aclose()
            await self.engine.dispose()
            if self.read_engine is not None:
                await self.read_engine.dispose()

    async def __aenter__(self) -> Self:
        """Start the background work (unless built with ``start=False``)."""
        if self._start_on_enter:
            self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop and close."""
        await self.aclose()
