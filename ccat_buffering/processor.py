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
import enum
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from pydantic import BaseModel

from ccat_buffering._sizing import BatchSizer
from ccat_buffering.errors import BackendError, ConfigurationError, DatabaseUnavailableError
from ccat_buffering.executor import BatchResult, TransactionExecutor
from ccat_buffering.logs import SiteLogger
from ccat_buffering.lsn import LSN
from ccat_buffering.manager import Delivery, TransactionManager
from ccat_buffering.models import Transaction, TransactionState, TransactionStatus, utc_now
from ccat_buffering.protocols import SupportsProcessorReports
from ccat_buffering.retry import FailureKind, describe_error

__all__ = ["BackgroundProcessor", "ProcessorHealth", "ProcessorState"]


class ProcessorState(enum.StrEnum):
    """What a processor is doing."""

    STOPPED = "stopped"
    STANDBY = "standby"
    RUNNING = "running"
    PAUSED = "paused"


class ProcessorHealth(BaseModel):
    """A processor's own view of itself and its site's buffer.

    Attributes:
        state: Running, standing by, paused by an outage, or stopped.
        cause: Why it is paused.
        holder: This processor's lease token.
        lease_holder: Who holds the site's lease now.
        last_run_at: When it last claimed from the buffer.
        processed: Transactions committed (or found applied) by this processor.
        retried: Failed attempts sent back to retry (data errors).
        conflicts: Serialization failures and deadlocks, retried at once.
        dead_lettered: Transactions it dead-lettered.
        outages: Batches returned to the queue because the database was down.
        depth: Transactions waiting in the buffer.
        in_flight: Transactions claimed and not yet settled.
        dead_letters: Transactions in the dead-letter store.
    """

    state: ProcessorState
    cause: str | None = None
    holder: str
    lease_holder: str | None = None
    last_run_at: dt.datetime | None = None
    processed: int = 0
    retried: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    outages: int = 0
    depth: int = 0
    in_flight: int = 0
    dead_letters: int = 0


@dataclass
class _Counters:
    processed: int = 0
    retried: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    outages: int = 0


async def _claimed(ahead: asyncio.Future[list[Delivery]] | None) -> list[Delivery]:
    """What a claim made ahead of time got; nothing when it failed (it claimed nothing)."""
    if ahead is None:
        return []
    try:
        return await ahead
    except BackendError:
        return []


def _default_holder() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class BackgroundProcessor:
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
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self.outage_base_delay = outage_base_delay
        self.outage_max_delay = outage_max_delay
        self.probe_interval = probe_interval
        self.sizer = sizer
        self.prefetch = prefetch
        self._prefetched: list[Delivery] = []
        self._rtt_measured_at = float("-inf")
        self._unanswered_since: float | None = None
        self._unanswered_detail = ""
        self.holder = holder or _default_holder()
        self.log = SiteLogger(__name__, manager.backend.site)
        self.clock = clock
        self.state = ProcessorState.STOPPED
        self.cause: str | None = None
        self.last_run_at: dt.datetime | None = None
        self.counters = _Counters()
        self._has_lease = False
        self._renewed_at = float("-inf")
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

    async def _hold_lease(self) -> bool:
        lease = self.manager.backend.lease
        if self._has_lease:
            if await self._still_holding():
                return True
            self.log.warning("lease lost by %s", self.holder)
            self._has_lease = False
        if not await lease.acquire(self.holder, self.lease_ttl):
            self.state = ProcessorState.STANDBY
            return False
        self._has_lease, self._renewed_at = True, self.clock()
        await self._settled()  # our last batch's acks land before anything is recovered
        self._prefetched = []  # recovered below with everything else in flight
        recovered = await self.manager.backend.buffer.recover(include_unexpired=True)
        if recovered:
            self.log.info(
                "took the lease and returned %d in-flight transaction(s) to the head", recovered
            )
        return True

    async def _still_holding(self) -> bool:
        """Renew the lease held since before the batch; never take it anew here."""
        if self.clock() - self._renewed_at < self.lease_ttl / 3:
            return True
        if await self.manager.backend.lease.renew(self.holder, self.lease_ttl):
            self._renewed_at = self.clock()
            return True
        return False

    def outage_delay(self) -> float:
        """Seconds to wait before trying the database again after the current streak."""
        if self._outage_streak == 0:
            return 0.0
        exponent = min(self._outage_streak - 1, 30)
        return float(min(self.outage_max_delay, self.outage_base_delay * 2**exponent))

    async def run_once(self) -> int:
        """Claim one batch, apply it, and settle every transaction in it.

        Cycles of one processor never overlap: a call made while another runs
        (the background loop, :meth:`drain`) waits for it to finish.

        Returns:
            How many transactions the database now holds from this batch.
        """
        async with self._cycle:
            try:
                return await self._cycle_once()
            finally:
                if not self._overlap:
                    await self._settled()

    async def _settled(self) -> None:
        """Wait for the settling of the last committed batch, if it still runs.

        Raises:
            BackendError: Settling failed; the batch is still in flight and is
                recovered before the next claim (the ledger makes it a no-op).
        """
        settling, self._settling = self._settling, None
        if settling is not None:
            try:
                await settling
            except BaseException:
                self._unsettled = True
                raise

    async def _cycle_once(self) -> int:
        if not await self._hold_lease():
            return 0
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

    async def _measure_rtt(self, sizer: BatchSizer) -> None:
        # A ping is three round trips on either driver (BEGIN, SELECT 1, the
        # pool's ROLLBACK); the fastest of three samples is the link, not a hiccup.
        samples = []
        for _ in range(3):
            began = time.perf_counter()
            if not await self.executor.ping():
                return
            samples.append((time.perf_counter() - began) / 3)
        sizer.observe_rtt(min(samples))
        self._rtt_measured_at = time.perf_counter()

    async def _claim_and_apply(self) -> int:
        sizer = self.sizer
        if sizer is not None and time.perf_counter() - self._rtt_measured_at > 60.0:
            await self._measure_rtt(sizer)
        cycle_began = time.perf_counter()
        size = self.batch_size if sizer is None else sizer.size
        if self._prefetched:
            deliveries, self._prefetched = self._prefetched, []
        else:
            await self._settled()
            deliveries = await self.manager.claim(size, self.claim_lease)
        self.last_run_at = utc_now()
        if not deliveries:
            if self.state is not ProcessorState.PAUSED:
                self.state = ProcessorState.RUNNING
            return 0
        transactions = [d.transaction for d in deliveries]
        began = self.clock()
        execution = asyncio.ensure_future(self._execute(transactions))
        try:
            await self._settled()  # the previous batch's, behind this one's round trip
        except BaseException:
            with contextlib.suppress(BaseException):
                await execution  # settled or recovered with the rest at the next cycle
            raise
        ahead = (
            asyncio.ensure_future(self._claim_ahead())
            if self.prefetch and len(deliveries) >= size
            else None
        )
        try:
            result = await execution
        except (DatabaseUnavailableError, ConfigurationError) as exc:
            if await self._still_holding():
                # Later claims go back first, so that this batch lands ahead of them.
                await self._give_back(await _claimed(ahead), "an earlier batch paused")
                await self._pause(deliveries, exc)
            else:
                # Another processor owns these claims now: touch nothing of theirs.
                await _claimed(ahead)
                self._has_lease = False
                self.state = ProcessorState.STANDBY
            if isinstance(exc, ConfigurationError):
                self._unanswered_since = None
            elif self._unanswered_since is None:
                self._unanswered_since = began
            return 0
        except BaseException:
            await _claimed(ahead)  # recovered with the rest at the next cycle (_unsettled)
            raise
        self._outage_streak = 0
        self._unanswered_since = None
        self.state, self.cause = ProcessorState.RUNNING, None
        if not await self._still_holding():
            # The lease lapsed while this batch ran: whoever holds it next recovers
            # the claims, and the ledger makes what this batch committed a no-op.
            self.log.warning("lease lost during a batch; leaving its claims to the next holder")
            self._has_lease = False
            self.state = ProcessorState.STANDBY
            await _claimed(ahead)  # in flight under our old lease: the next holder's
            return 0
        done = [d for d, o in zip(deliveries, result.outcomes, strict=True) if o.done]
        failures: list[tuple[Delivery, BaseException, FailureKind]] = [
            (d, o.error, o.kind or FailureKind.DATA)
            for d, o in zip(deliveries, result.outcomes, strict=True)
            if o.error is not None
        ]
        following = await _claimed(ahead)
        if failures:
            # A retried transaction holds the head: nothing after it may apply first.
            await self._give_back(following, "an earlier transaction is retried first")
        else:
            self._prefetched = following
        if done:
            settling = asyncio.ensure_future(self._settle(done, result.commit_lsn))
            if self._overlap and not failures:
                self._settling = settling
            else:
                await settling
        if failures:
            statuses = await self.manager.failed(failures)
            for (_, _, kind), status in zip(failures, statuses, strict=True):
                self._count_failure(kind, status)
        if sizer is not None and len(deliveries) >= size:
            # Only full batches: a short one (the queue ran dry) measures the
            # fixed costs of a cycle, not what a transaction costs.
            sizer.observe(
                len(deliveries),
                time.perf_counter() - cycle_began,
                sum(len(d.claim.payload) for d in deliveries),
            )
        return len(done)

    async def _claim_ahead(self) -> list[Delivery]:
        """Claim the next batch and prepare it, while the current one is on the link."""
        deliveries = await self.manager.claim(self.next_size(), self.claim_lease)
        if deliveries:
            self.executor.prepare([d.transaction for d in deliveries])
        return deliveries

    async def _settle(self, done: list[Delivery], commit_lsn: LSN | None) -> None:
        await self.manager.committed(done, commit_lsn)
        self.counters.processed += len(done)

    async def _execute(self, transactions: list[Transaction]) -> BatchResult:
        async with self._renewing():
            return await self.executor.execute_batch(transactions)

    def next_size(self) -> int:
        """The size of the next batch claimed."""
        return self.batch_size if self.sizer is None else self.sizer.size

    async def _give_back(self, deliveries: list[Delivery], why: str) -> None:
        if deliveries:
            await self.manager.paused(deliveries, f"returned unapplied: {why}")

    def _count_failure(self, kind: FailureKind, status: TransactionStatus) -> None:
        tx = status.transaction_id
        if status.state is TransactionState.FAILED:
            self.counters.dead_lettered += 1
            self.log.error("dead-lettered: %s", status.last_error, transaction_id=tx)
        elif kind is FailureKind.CONFLICT:
            self.counters.conflicts += 1
            self.log.info("conflicted; retrying", transaction_id=tx)
        else:
            self.counters.retried += 1
            self.log.warning(
                "will be retried (attempt %d): %s",
                status.attempts,
                status.last_error,
                transaction_id=tx,
            )

    @contextlib.asynccontextmanager
    async def _renewing(self) -> AsyncIterator[None]:
        """Keep the lease while a batch waits on the database, however long it waits."""
        task = asyncio.create_task(self._renew_while_waiting())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, BackendError):
                await task

    async def _renew_while_waiting(self) -> None:
        lease = self.manager.backend.lease
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            if await lease.renew(self.holder, self.lease_ttl):
                self._renewed_at = self.clock()
            else:
                self._renewed_at = float("-inf")  # the check after the batch sees it
                return

    def _unanswered_cause(self) -> str | None:
        if self._unanswered_since is None:
            return None
        seconds = max(self.clock() - self._unanswered_since, 0.0)
        return f"main database not answering for {seconds:.0f} s ({self._unanswered_detail})"

    async def _pause(self, deliveries: list[Delivery], exc: Exception) -> None:
        if isinstance(exc, ConfigurationError):
            cause = f"database not ready: {describe_error(exc)}"
        else:
            cause = f"database unreachable: {describe_error(exc.__cause__ or exc)}"
            self._unanswered_detail = cause
        await self.manager.paused(deliveries, cause)
        self._outage_streak += 1
        self.counters.outages += 1
        self.state, self.cause = ProcessorState.PAUSED, cause
        self.log.warning("paused, %s; next attempt in %.1f s", cause, self.outage_delay())

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
                    if self._has_lease and self.clock() - self._published_at >= 1.0:
                        await self.publish()
                except BackendError as exc:
                    # The buffer itself is unreachable: nothing can be claimed or
                    # settled; what is in flight is recovered when it comes back.
                    applied = 0
                    self._outage_streak += 1
                    self.counters.outages += 1
                    self.state = ProcessorState.PAUSED
                    self.cause = f"buffer unreachable: {describe_error(exc)}"
                    self.log.warning("paused, %s", self.cause)
                if self.state is ProcessorState.PAUSED and self._unanswered_since is not None:
                    await self._wait_for_answer(self.outage_delay())
                    continue
                if self.state is ProcessorState.PAUSED:
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
            if self._has_lease:
                with contextlib.suppress(BackendError):
                    await self.publish()
                    await self.manager.backend.lease.release(self.holder)
                self._has_lease = False
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
            async with self._renewing():  # a probe may wait out the connect timeout
                if await self.executor.ping():
                    return
            if self._has_lease and self.clock() - self._published_at >= 1.0:
                with contextlib.suppress(BackendError):
                    await self._still_holding()
                    await self.publish()

    def start(self) -> asyncio.Task[None]:
        """Run in a background task.

        Returns:
            The task.
        """
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"processor-{self.holder}")
        return self._task

    async def stop(self) -> None:
        """Finish the current batch, release the lease and return.

        Does nothing when no loop runs or is about to.
        """
        if self._task is not None:
            self._stop.set()
            await self._task
            self._task = None
        elif self._running:
            self._stop.set()
            await self._finished.wait()

    async def drain(self, timeout: float = 60.0) -> bool:
        """Run batches until the buffer is empty (no waiting entries, none in flight).

        Meant for tools and tests that want the queue settled now. Waits out
        retry holds and outage pauses while the time allows.

        Args:
            timeout: Give up after this many seconds.

        Returns:
            Whether the buffer is empty.
        """
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            await self.run_once()
            stats = await self.manager.backend.buffer.stats()
            if stats.depth == 0 and stats.in_flight == 0:
                return True
            if self.state is ProcessorState.STANDBY:
                return False
            if self.state is ProcessorState.PAUSED:
                await asyncio.sleep(min(self.outage_delay(), max(deadline - self.clock(), 0)))
            elif stats.held_until is not None:
                await asyncio.sleep(min(self.poll_interval, max(deadline - self.clock(), 0)))
        return False

    async def health(self) -> ProcessorHealth:
        """This processor's state and its site's buffer counts."""
        stats = await self.manager.backend.buffer.stats()
        lease = await self.manager.backend.lease.current()
        return ProcessorHealth(
            state=self.state,
            cause=(
                self._unanswered_cause() or self.cause
                if self.state is ProcessorState.PAUSED
                else self.cause
            ),
            holder=self.holder,
            lease_holder=None if lease is None else lease.holder,
            last_run_at=self.last_run_at,
            processed=self.counters.processed,
            retried=self.counters.retried,
            conflicts=self.counters.conflicts,
            dead_lettered=self.counters.dead_lettered + self.manager.unreadable,
            outages=self.counters.outages,
            depth=stats.depth,
            in_flight=stats.in_flight,
            dead_letters=stats.dead_letters,
        )
