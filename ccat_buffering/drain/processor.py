"""The background processor: claim, execute, acknowledge, retry or dead-letter.

One processor drains a site at a time: it holds the site's lease while it
works and stands by while another holds it. When it takes the lease it first
returns whatever the previous holder left in flight to the head of the queue,
so order holds and nothing is lost; the executor's ledger makes the
re-execution of a transaction that was in fact committed harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import Callable

from ccat_buffering.buffer.counts import BufferCounts
from ccat_buffering.buffer.manager import Delivery, TransactionManager
from ccat_buffering.buffer.protocols import SupportsProcessorReports
from ccat_buffering.buffer.retry import describe_error
from ccat_buffering.drain import operator_pause
from ccat_buffering.drain._batch_cycle import BatchCycle
from ccat_buffering.drain._draining import drain_buffer
from ccat_buffering.drain._lease_holding import LeaseHolding
from ccat_buffering.drain._sizing import BatchSizer
from ccat_buffering.drain._stopping import CANCEL_BOUND, finish_or_cancel, raise_if_cancelling
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor_state import Counters, ProcessorHealth, ProcessorState
from ccat_buffering.drain.tracing import Tracing
from ccat_buffering.errors import BackendError
from ccat_buffering.logs import SiteLogger

__all__ = ["STOP_GRACE", "BackgroundProcessor", "ProcessorHealth", "ProcessorState"]

STOP_GRACE = 5.0
"""Seconds :meth:`BackgroundProcessor.stop` lets the current batch finish before cancelling it."""


def _default_holder() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class BackgroundProcessor(BatchCycle):
    """Drains one site's buffer into the main database, in order.

    Args:
        manager: The site's transaction manager.
        executor: Applies transactions to the main database.
        batch_size: Transactions claimed and applied per database transaction.
        claim_lease: Seconds a claim holds before another processor may recover it.
        lease_ttl: Seconds the site lease lasts unless renewed.
        poll_interval: Seconds to wait when the buffer is empty.
        outage_base_delay: First pause after the database is found unreachable.
        outage_max_delay: Longest pause between attempts to reach it.
        probe_interval: While paused by an unreachable database, seconds
            between cheap probes (``SELECT 1``); the drain resumes as soon as
            one answers rather than at the end of the backoff.
        prefetch: Claim the next batch while the current one is in flight
            (the round trip hides the claim); it goes back to the head,
            behind the current batch, when that batch pauses or retries.
        sizer: Sizes batches by the link (round-trip time, per-transaction
            cost, payload bytes); ``None`` keeps every batch at ``batch_size``.
        holder: This processor's lease token (host, pid and a random part by default).
        clock: Monotonic seconds, for lease renewal and backoff.
    """

    def __init__(
        self,
        manager: TransactionManager,
        executor: TransactionExecutor,
        *,
        batch_size: int = 100,
        claim_lease: float = 60.0,
        lease_ttl: float = 15.0,
        poll_interval: float = 0.1,
        outage_base_delay: float = 1.0,
        outage_max_delay: float = 60.0,
        probe_interval: float = 2.0,
        sizer: BatchSizer | None = None,
        prefetch: bool = False,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.manager = manager
        self.executor = executor
        self.batch_size = batch_size
        self.claim_lease = claim_lease
        self.poll_interval = poll_interval
        self.outage_base_delay = outage_base_delay
        self.outage_max_delay = outage_max_delay
        self.probe_interval = probe_interval
        self.sizer = sizer
        self.prefetch = prefetch
        self._prefetched: list[Delivery] = []
        self._operator_held = False
        self._rtt_measured_at = float("-inf")
        self._unanswered_since: float | None = None
        self._unanswered_detail = ""
        self.holder = holder or _default_holder()
        self.lease = LeaseHolding(manager.backend.lease, self.holder, lease_ttl, clock)
        self.log = SiteLogger(__name__, manager.backend.site)
        self.clock = clock
        self.state = ProcessorState.STOPPED
        self.cause: str | None = None
        self.last_run_at: dt.datetime | None = None
        self.counters = Counters()
        self.tracing = Tracing(manager.backend.site)
        self.stall_after = 10.0
        """Seconds a batch's call may wait before health says the database is not answering."""
        self._call_began: float | None = None
        self._outage_streak = 0
        self._unsettled = False
        self._published_at = float("-inf")
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        # One cycle at a time: a drain() beside the background loop, or two loops,
        # would otherwise recover each other's claims and apply them twice.
        self._cycle = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        # The loop settles a committed batch (statuses, acks) while the next one
        # is in flight: the round trip hides the work. Set only by run().
        self._overlap = False
        self._settling: asyncio.Future[None] | None = None
        self._to_settle = None

    @property
    def lease_ttl(self) -> float:
        """Seconds the site lease lasts unless renewed."""
        return self.lease.ttl

    async def _hold_lease(self) -> bool:
        if self.lease.held:
            if await self.lease.still_held():
                return True
            self.log.warning("lease lost by %s", self.holder)
            self.lease.held = False
        if not await self.lease.take():
            self.state = ProcessorState.STANDBY
            return False
        await self._settled()  # our last batch's acks land before anything is recovered
        self._prefetched = []  # recovered below with everything else in flight
        recovered = await self.manager.backend.buffer.recover(include_unexpired=True)
        if recovered:
            self.log.info(
                "took the lease and returned %d in-flight transaction(s) to the head", recovered
            )
        return True

    async def run_once(self) -> int:
        """Claim one batch, apply it, and settle every transaction in it.

        Cycles of one processor never overlap: a call made while another runs
        (the background loop, :meth:`drain`) waits for it to finish.

        Returns:
            How many transactions the database now holds from this batch.
        """
        async with self._cycle:
            deferred = self._to_settle
            try:
                return await self._cycle_once()
            finally:
                if deferred is not None and self._to_settle is deferred:
                    # A settling put off until this cycle's batch was sent
                    # waits no longer when the cycle sent none (a lost lease,
                    # a pause, a buffer gone away).
                    self._start_settling()
                if not self._overlap:
                    await self._settled()

    async def _cycle_once(self) -> int:
        if not await self._hold_lease():
            return 0
        held = await operator_pause.current(self.manager.backend)
        if held is not None:
            return await self._hold_for_operator(held.cause)
        if self._operator_held:
            self._operator_held = False
            self.state, self.cause = ProcessorState.RUNNING, None
            self.log.info("resumed by the operator")
        if self._unsettled:
            # The last cycle broke off (a lost reply, a store that went away):
            # whatever it left in flight goes back to the head, in order, before
            # anything later is claimed. Between batches nothing of ours is in flight.
            await self.manager.backend.buffer.recover(include_unexpired=True)
            self._prefetched = []
            self._unsettled = False
        self._unsettled = True
        applied = await self._claim_and_apply()
        self._unsettled = False
        return applied

    async def _hold_for_operator(self, cause: str) -> int:
        """Claim nothing while an operator's pause is in force; keep the lease.

        The batch in flight is settled first and a prefetched one goes back
        to the head, so nothing stays claimed while the drain is paused.
        """
        await self._settled()
        if self._prefetched:
            self._prefetched = []
            await self.manager.backend.buffer.recover(include_unexpired=True)
        if not self._operator_held:
            self.log.warning("%s", cause)
        self._operator_held = True
        self.state, self.cause = ProcessorState.PAUSED, cause
        return 0

    def _unanswered_cause(self) -> str | None:
        if self._unanswered_since is None:
            return None
        seconds = max(self.clock() - self._unanswered_since, 0.0)
        return f"main database not answering for {seconds:.0f} s ({self._unanswered_detail})"

    async def publish(self) -> None:
        """Publish this processor's health where operators' tools read it, if they can."""
        lease = self.manager.backend.lease
        if isinstance(lease, SupportsProcessorReports):
            report = await self.health()
            await lease.publish_report(report.model_dump_json(), self.lease_ttl * 2)
        self._published_at = self.clock()

    async def run(self) -> None:
        """Work until :meth:`stop` is called; then release the lease.

        A stop requested before the loop began (``start()`` then ``stop()``
        with no await between them) is honoured: the loop does not start.

        Raises:
            RuntimeError: This processor's loop is already running.
        """
        if self._running:
            raise RuntimeError(
                f"processor {self.holder} is already running; one processor runs one loop "
                "(use a second BackgroundProcessor for a standby)"
            )
        self._running, self._overlap = True, True
        self._finished.clear()
        self.state = ProcessorState.RUNNING
        try:
            while not self._stop.is_set():
                try:
                    applied = await self.run_once()
                    if self.lease.held and self.clock() - self._published_at >= 1.0:
                        await self.publish()
                except BackendError as exc:
                    raise_if_cancelling()
                    # The buffer itself is unreachable: nothing can be claimed or
                    # settled; what is in flight is recovered when it comes back.
                    applied = 0
                    self._outage_streak += 1
                    self.counters.outages += 1
                    self.state = ProcessorState.PAUSED
                    self.cause = f"buffer unreachable: {describe_error(exc)}"
                    self.log.warning("paused, %s", self.cause)
                if self._operator_held:
                    wait = min(self.poll_interval * 10, 1.0)  # a resume takes effect soon
                elif self.state is ProcessorState.PAUSED and self._unanswered_since is not None:
                    await self._wait_for_answer(self.outage_delay())
                    continue
                elif self.state is ProcessorState.PAUSED:
                    wait = self.outage_delay()
                elif self.state is ProcessorState.STANDBY:
                    wait = self.lease_ttl / 3
                elif applied:
                    continue
                else:
                    wait = self.poll_interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)
        finally:
            self._overlap = False
            with contextlib.suppress(BackendError):
                await self._settled()
            self.state = ProcessorState.STOPPED
            if self.lease.held:
                with contextlib.suppress(BackendError):
                    await self.publish()
                    await self.manager.backend.lease.release(self.holder)
                self.lease.held = False
            self._stop.clear()
            self._running = False
            self._finished.set()

    async def _wait_for_answer(self, wait: float) -> None:
        """Sit out an outage pause, ending it early when a probe gets an answer."""
        deadline = self.clock() + wait
        while not self._stop.is_set() and (left := deadline - self.clock()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(self.probe_interval, left))
            if self._stop.is_set():
                return
            async with self.lease.kept():  # a probe may wait out the connect timeout
                if await self.executor.ping():
                    return
            if self.lease.held and self.clock() - self._published_at >= 1.0:
                with contextlib.suppress(BackendError):
                    await self.lease.still_held()
                    await self.publish()

    def start(self) -> asyncio.Task[None]:
        """Run in a background task.

        Returns:
            The task.
        """
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"processor-{self.holder}")
        return self._task

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Finish the current batch, release the lease and return, within a bounded time.

        The batch gets ``grace`` seconds to finish; the loop is then
        cancelled (again and again, for at most
        :data:`~ccat_buffering.drain._stopping.CANCEL_BOUND` seconds): what it had in
        flight is recovered when its claim lease expires, and the ledger makes
        the redelivery harmless. Does nothing when no loop runs or is about to.

        Args:
            grace: Seconds the current batch may take to finish.
        """
        if self._task is not None:
            self._stop.set()
            task, self._task = self._task, None
            await finish_or_cancel(task, grace=grace, log=self.log)
        elif self._running:
            self._stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), grace + CANCEL_BOUND)

    async def drain(self, timeout: float = 60.0) -> bool:
        """Run batches until the buffer is empty (no waiting entries, none in flight).

        Meant for tools and tests that want the queue settled now. Waits out
        retry holds, outage pauses and an unreachable buffer while the time allows.

        Args:
            timeout: Give up after this many seconds.

        Returns:
            Whether the buffer is empty.
        """
        return await drain_buffer(self, timeout)

    async def health(self) -> ProcessorHealth:
        """This processor's state and its site's buffer counts."""
        stats = await self.manager.backend.buffer.stats()
        lease = await self.manager.backend.lease.current()
        state, cause = (
            self.state,
            (
                self._unanswered_cause() or self.cause
                if self.state is ProcessorState.PAUSED
                else self.cause
            ),
        )
        stalled = self.stalled_for()
        if state is ProcessorState.RUNNING and stalled is not None:
            state = ProcessorState.PAUSED
            cause = (
                f"main database not answering for {stalled:.0f} s (a batch's call is "
                "waiting: the link may hang; it ends at the statement timeout)"
            )
        return ProcessorHealth(
            state=state,
            cause=cause,
            holder=self.holder,
            lease_holder=None if lease is None else lease.holder,
            last_run_at=self.last_run_at,
            processed=self.counters.processed,
            retried=self.counters.retried,
            conflicts=self.counters.conflicts,
            conflicted=self.counters.conflicted,
            dead_lettered=self.counters.dead_lettered + self.manager.unreadable,
            outages=self.counters.outages,
            **BufferCounts.of(stats),
        )
