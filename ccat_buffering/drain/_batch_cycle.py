"""One cycle of the drain: claim a batch, apply it, settle every transaction in it.

Part of :class:`~ccat_buffering.drain.processor.BackgroundProcessor`, in a module of
its own because it is the part that decides what happens to each
transaction; the processor adds the lease, the loop and its report.

With prefetch on, a batch's round trip hides the client work of the
batches around it: while batch *n* waits on the main database, batch *n-1*
(committed) is settled and batch *n+1* is claimed, read and prepared. A
batch that pauses or has a failure to retry sends the prefetched one back to
the head behind it, so order holds.

Order holds through failures too: the executor commits only what precedes a
batch's first failure that holds the queue, and the cycle returns the failed
transaction (with its backoff) and everything after it to the head in buffer
order. A transaction the schema refuses through no fault of its own (drift)
pauses the queue at itself, as an unreachable database does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ccat_buffering.buffer.manager import Delivery, TransactionManager
from ccat_buffering.buffer.retry import FailureKind, describe_error
from ccat_buffering.conflicts.kinds import Conflict
from ccat_buffering.drain._lease_holding import LeaseHolding
from ccat_buffering.drain._sizing import BatchSizer
from ccat_buffering.drain._stopping import raise_if_cancelling
from ccat_buffering.drain.executor import BatchResult, TransactionExecutor
from ccat_buffering.drain.outcome import Outcome
from ccat_buffering.drain.processor_state import Counters, ProcessorState
from ccat_buffering.drain.tracing import Tracing
from ccat_buffering.errors import BackendError, ConfigurationError, DatabaseUnavailableError
from ccat_buffering.logs import SiteLogger
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import Transaction, TransactionState, TransactionStatus, utc_now

__all__ = ["BatchCycle"]

_Committed = tuple[list[Delivery], LSN | None, Mapping[str, Mapping[str, Mapping[str, Any]]]]
"""A committed batch to settle: its deliveries, the commit's LSN, what the database generated."""


async def _claimed(ahead: asyncio.Future[list[Delivery]] | None) -> list[Delivery]:
    """What a claim made ahead of time got; nothing when it failed (it claimed nothing)."""
    if ahead is None:
        return []
    try:
        return await ahead
    except BackendError:
        return []


class _Sorted:
    """A batch's deliveries sorted by what became of them, in one pass (in buffer order)."""

    def __init__(
        self, deliveries: list[Delivery], outcomes: list[Outcome], all_done: bool = False
    ) -> None:
        """Sort ``deliveries`` by ``outcomes``; ``all_done``: the batch's were all plainly done."""
        self.done: list[Delivery] = []
        self.failures: list[tuple[Delivery, BaseException, FailureKind]] = []
        # Unapplied behind a failure that holds the queue: back to the head, in order.
        self.waiting: list[Delivery] = []
        # Drift (the schema refuses every such write) pauses the queue at its transaction.
        self.drift: BaseException | None = None
        self.conflicted: list[tuple[Delivery, str]] = []
        self.conflicts: list[Conflict] = []
        self.generated: dict[str, Mapping[str, Mapping[str, Any]]] = {}
        if all_done:  # the common batch: nothing to look at one by one
            self.done = list(deliveries)
            return
        outage = FailureKind.OUTAGE
        for delivery, outcome in zip(deliveries, outcomes, strict=True):
            if outcome.applied and not (
                outcome.error
                or outcome.kind
                or outcome.generated
                or outcome.conflicts
                or outcome.conflicted
            ):
                self.done.append(delivery)  # the common outcome, told at once
                continue
            error, kind = outcome.error, outcome.kind
            done = outcome.done
            if done:
                self.done.append(delivery)
            if outcome.generated:
                self.generated[outcome.transaction_id] = outcome.generated
            if error is not None:
                if kind is not outage:
                    self.failures.append((delivery, error, kind or FailureKind.DATA))
                elif self.drift is None:
                    self.drift = error
            if kind is outage or (not done and error is None and not outcome.conflicted):
                self.waiting.append(delivery)
            if outcome.conflicts:
                self.conflicts += outcome.conflicts
            if outcome.conflicted:
                reason = "; ".join(c.describe() for c in outcome.conflicts)
                self.conflicted.append((delivery, reason))


class BatchCycle:
    """Claims, applies and settles batches; the processor's state lives on it."""

    manager: TransactionManager
    executor: TransactionExecutor
    lease: LeaseHolding
    log: SiteLogger
    clock: Callable[[], float]
    batch_size: int
    claim_lease: float
    prefetch: bool
    sizer: BatchSizer | None
    counters: Counters
    tracing: Tracing
    stall_after: float
    _call_began: float | None
    state: ProcessorState
    cause: str | None
    last_run_at: dt.datetime | None
    _prefetched: list[Delivery]
    _settling: asyncio.Future[None] | None
    _to_settle: _Committed | None
    _overlap: bool
    _unsettled: bool
    _rtt_measured_at: float
    _unanswered_since: float | None
    _unanswered_detail: str
    _outage_streak: int
    outage_base_delay: float
    outage_max_delay: float

    if TYPE_CHECKING:

        async def publish(self) -> None:
            """See :meth:`BackgroundProcessor.publish`."""

    def outage_delay(self) -> float:
        """Seconds to wait before trying the database again after the current streak."""
        if self._outage_streak == 0:
            return 0.0
        exponent = min(self._outage_streak - 1, 30)
        return float(min(self.outage_max_delay, self.outage_base_delay * 2**exponent))

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
        # Started in this order, each runs up to its first wait in it: the batch
        # is on its way to the database before any client work of the batches
        # around it (the next claim, then the previous batch's statuses) runs.
        execution = asyncio.ensure_future(self._execute(transactions))
        ahead = (
            asyncio.ensure_future(self._claim_ahead())
            if self.prefetch and len(deliveries) >= size
            else None
        )
        self._start_settling()
        try:
            await self._settled()  # the previous batch's, behind this one's round trip
        except BaseException:
            with contextlib.suppress(BaseException):
                await execution  # settled or recovered with the rest at the next cycle
            await _claimed(ahead)  # in flight: recovered with the rest at the next cycle
            raise
        try:
            result = await execution
        except (DatabaseUnavailableError, ConfigurationError) as exc:
            if await self.lease.still_held():
                # Later claims go back first, so that this batch lands ahead of them.
                await self._give_back(await _claimed(ahead), "an earlier batch paused")
                await self._pause(deliveries, exc)
            else:
                # Another processor owns these claims now: touch nothing of theirs.
                await _claimed(ahead)
                self.lease.held = False
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
        if not await self.lease.still_held():
            # The lease lapsed while this batch ran: whoever holds it next recovers
            # the claims, and the ledger makes what this batch committed a no-op.
            self.log.warning("lease lost during a batch; leaving its claims to the next holder")
            self.lease.held = False
            self.state = ProcessorState.STANDBY
            await _claimed(ahead)  # in flight under our old lease: the next holder's
            return 0
        sorted_out = _Sorted(deliveries, result.outcomes, result.all_done)
        done, failures, waiting = sorted_out.done, sorted_out.failures, sorted_out.waiting
        drift, conflicted = sorted_out.drift, sorted_out.conflicted
        self.manager.found_conflicts(sorted_out.conflicts)
        if conflicted:
            # Out of the queue at once, never retried (nor holding what follows
            # it): the conflict log keeps them.
            await self.manager.conflicted(conflicted)
            self.counters.conflicted += len(conflicted)
            for delivery, reason in conflicted:
                self.log.warning("conflicted: %s", reason, transaction_id=delivery.transaction_id)
        following = await _claimed(ahead)
        if failures or waiting:
            waiting += following  # nothing after a held head may apply first
        else:
            self._prefetched = following
        if done:
            generated = sorted_out.generated
            if self._overlap and not failures and not waiting:
                # Settled behind the next batch's round trip, started once that
                # batch is sent (see _start_settling).
                self._to_settle = (done, result.commit_lsn, generated)
            else:
                await self._settle(done, result.commit_lsn, generated)
        if failures or (waiting and drift is None):
            behind = [] if drift is not None else waiting
            statuses = await self.manager.failed(failures, returned=behind)
            for (_, _, kind), status in zip(failures, statuses, strict=True):
                self._count_failure(kind, status)
        if drift is not None:
            await self._pause(waiting, drift)
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

    async def _settle(
        self,
        done: list[Delivery],
        commit_lsn: LSN | None,
        generated: Mapping[str, Mapping[str, Mapping[str, Any]]],
    ) -> None:
        await self.manager.committed(done, commit_lsn, generated)
        self.counters.processed += len(done)

    async def _execute(self, transactions: list[Transaction]) -> BatchResult:
        self._call_began = self.clock()
        # A hung link answers nothing until the statement timeout: say so, to
        # operators in other processes too, instead of "running".
        reporting = asyncio.ensure_future(self._report_while_waiting())
        try:
            with self.tracing.processing(transactions) as span:
                async with self.lease.kept():
                    result = await self.executor.execute_batch(transactions)
                done = (
                    transactions
                    if result.all_done
                    else [t for t, o in zip(transactions, result.outcomes, strict=True) if o.done]
                )
                self.tracing.committed(done, result.commit_lsn, span)
                return result
        finally:
            self._call_began = None
            reporting.cancel()

    def stalled_for(self) -> float | None:
        """Seconds the current batch's call has waited, once past ``stall_after``; else ``None``."""
        began = self._call_began
        if began is None:
            return None
        waited = self.clock() - began
        return waited if waited >= self.stall_after else None

    async def _report_while_waiting(self) -> None:
        with contextlib.suppress(BackendError):
            while True:
                await asyncio.sleep(1.0)
                if self.lease.held and self.stalled_for() is not None:
                    await self.publish()
                    # Cancelled while publishing: a Redis call may have eaten it
                    # (see drain._lease_holding), and nobody awaits this task.
                    raise_if_cancelling()

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

    async def _pause(self, deliveries: list[Delivery], exc: BaseException) -> None:
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

    def _start_settling(self) -> None:
        """Start settling the last committed batch, if it waits to be."""
        if self._to_settle is not None:
            done, commit_lsn, generated = self._to_settle
            self._to_settle = None
            self._settling = asyncio.ensure_future(self._settle(done, commit_lsn, generated))

    async def _settled(self) -> None:
        """Settle the last committed batch, or wait for its settling if it runs.

        Raises:
            BackendError: Settling failed; the batch is still in flight and is
                recovered before the next claim (the ledger makes it a no-op).
        """
        self._start_settling()
        settling, self._settling = self._settling, None
        if settling is not None:
            try:
                await settling
            except BaseException:
                self._unsettled = True
                raise
