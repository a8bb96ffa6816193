"""Knowing when the site's replica shows a commit, and only then letting caches go.

A :class:`ReplicationChecker` answers one question per poll: how far has the
replica replayed? The :class:`ReplicationTracker` asks it once for all
committed transactions (whose statuses, kept in the backend ordered by commit
LSN, are the persisted pending set), marks those at or below the replay
position ``replicated`` and releases their caches, and extends the caches of
the rest so that they cannot expire first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.drain._stopping import raise_if_cancelling
from ccat_buffering.errors import BackendError, ReplicationError
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import TransactionState, TransactionStatus

__all__ = [
    "ImmediateReplicationChecker",
    "LSNReplicationChecker",
    "ReplicaState",
    "ReplicationChecker",
    "ReplicationReport",
    "ReplicationTracker",
]


@dataclass(frozen=True)
class ReplicaState:
    """Where the replica stands.

    Attributes:
        replay_lsn: The last WAL position replayed, or ``None`` if the server
            is not a standby (or was promoted).
        replays_everything: The reads go to the main database itself, so
            every commit is visible at once.
        lag_seconds: Time since the last replayed transaction's commit, if known.
    """

    replay_lsn: LSN | None
    replays_everything: bool = False
    lag_seconds: float | None = None

    @property
    def standby(self) -> bool:
        """Whether the server is replaying WAL (else it confirms nothing)."""
        return self.replays_everything or self.replay_lsn is not None

    def shows(self, commit_lsn: LSN | None) -> bool:
        """Whether a commit at ``commit_lsn`` is visible on the replica."""
        if self.replays_everything:
            return True
        return (
            self.replay_lsn is not None and commit_lsn is not None and commit_lsn <= self.replay_lsn
        )


@runtime_checkable
class ReplicationChecker(Protocol):
    """Asks the site's replica how far it has replayed."""

    async def poll(self) -> ReplicaState:
        """Where the replica stands now, in one query.

        Raises:
            ReplicationError: The replica could not be asked.
        """
        ...


class ImmediateReplicationChecker:
    """For a single database (SQLite, or a main site reading its own primary).

    Committed means visible, so every committed transaction is confirmed.
    """

    async def poll(self) -> ReplicaState:
        """Report that everything committed is visible."""
        return ReplicaState(replay_lsn=None, replays_everything=True)


class LSNReplicationChecker:
    """Polls a PostgreSQL streaming replica with ``pg_last_wal_replay_lsn()``.

    Args:
        engine: The replica (read-only is enough).
    """

    QUERY = text(
        # A promoted standby keeps answering its last replayed LSN: count it as none.
        "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text END, "
        "EXTRACT(EPOCH FROM (clock_timestamp() - pg_last_xact_replay_timestamp()))::float8"
    )

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def poll(self) -> ReplicaState:
        """Ask the replica where its replay stands, in one statement."""
        try:
            async with self.engine.connect() as conn:
                row = (await conn.execute(self.QUERY)).one()
        except Exception as exc:
            raise ReplicationError(f"the replica could not be asked: {exc}") from exc
        lsn_text, lag = row
        return ReplicaState(
            replay_lsn=None if lsn_text is None else LSN.parse(lsn_text),
            lag_seconds=None if lag is None else max(float(lag), 0.0),
        )


@dataclass(frozen=True)
class ReplicationReport:
    """What one poll found.

    Attributes:
        replica: The replica's state, or ``None`` if it could not be asked.
        confirmed: Transactions marked ``replicated`` by this poll.
        pending: Committed transactions still waiting for the replica.
        oldest_pending_seconds: Age of the oldest pending commit.
        lagging: The oldest pending commit has waited longer than the timeout.
        error: Why the replica could not be asked.
        lag_bytes: WAL between the replica's replay position and the newest
            pending commit, when both are known.
    """

    replica: ReplicaState | None
    confirmed: int
    pending: int
    oldest_pending_seconds: float | None
    lagging: bool
    error: str | None = None
    lag_bytes: int | None = None


class ReplicationTracker:
    """Confirms committed transactions against the replica and releases their caches.

    Args:
        manager: The site's transaction manager.
        checker: Asks the replica.
        poll_interval: Seconds between polls (origin: 0.1).
        timeout: Seconds after which a pending commit is reported as lagging
            (origin: 30); it is still tracked, never dropped.
        clock: Seconds since the epoch.
        leading: Asked before each poll: whether this process confirms the
            site's replication now (the lease holder does, so that one
            process per site marks ``replicated`` and counts it once).
            ``None``: always.
    """

    def __init__(
        self,
        manager: TransactionManager,
        checker: ReplicationChecker,
        *,
        poll_interval: float = 0.1,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        leading: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.manager = manager
        manager.recent_commits.enabled = True  # what its processor commits is not read back
        self.checker = checker
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.clock = clock
        self.last_report: ReplicationReport | None = None
        self._last_extend = float("-inf")
        self._stop = asyncio.Event()
        self._running = False
        self._leading = leading
        self.leads = leading is None
        self.slice = 1000

    async def pending(self, limit: int | None = None) -> list[TransactionStatus]:
        """Committed transactions not yet confirmed, in commit-LSN order.

        Args:
            limit: At most this many, the oldest commits first.
        """
        store = self.manager.backend.status
        ids = await store.ids(TransactionState.COMMITTED, limit)
        # What this process's processor committed is not read back: only the rest.
        statuses = self.manager.recent_commits.recall(ids)
        unknown = [i for i, s in zip(ids, statuses, strict=True) if s is None]
        if unknown:
            read = iter(await store.get_many(unknown))
            statuses = [s if s is not None else next(read) for s in statuses]
        return [s for s in statuses if s is not None and s.state is TransactionState.COMMITTED]

    async def _maybe_extend(self) -> None:
        now = self.clock()
        if now - self._last_extend >= self.manager.cache_ttl / 3:
            await self._extend_unfinished()
            self._last_extend = now

    async def _extend_unfinished(self) -> None:
        # Buffered records must outlive an outage of any length, not only the
        # wait for the replica: extend every transaction not yet replicated.
        store = self.manager.backend.status
        unfinished = [s for s in TransactionState if not s.is_terminal]
        for state in unfinished:
            ids = await store.ids(state)
            for start in range(0, len(ids), 1000):
                await self.manager.backend.cache.extend(
                    ids[start : start + 1000], self.manager.cache_ttl
                )

    async def poll_once(self) -> ReplicationReport:
        """Ask the replica once and settle every pending transaction.

        Returns:
            What the poll found.
        """
        report, confirmed = await self._look()
        if confirmed:
            await self.manager.replicated(confirmed)
        await self._maybe_extend()
        self.last_report = report
        return report

    async def snapshot(self) -> ReplicationReport:
        """What a poll would find, changing nothing (for operators' tools).

        Returns:
            The report; ``confirmed`` counts what a poll would now confirm.
        """
        report, _ = await self._look()
        return report

    async def _look(self) -> tuple[ReplicationReport, list[TransactionStatus]]:
        # The oldest commits first, a bounded slice per poll: with a large backlog
        # (a replica down for days) a poll stays cheap, and the next takes the rest.
        pending = await self.pending(self.slice)
        replica: ReplicaState | None = None
        error: str | None = None
        if pending:
            try:
                replica = await self.checker.poll()
            except ReplicationError as exc:
                error = str(exc)
        confirmed: list[TransactionStatus] = []
        waiting: list[TransactionStatus] = []
        if replica is None:
            waiting = pending
        elif replica.replays_everything:
            confirmed = pending
        else:
            for status in pending:
                (confirmed if replica.shows(status.commit_lsn) else waiting).append(status)
        oldest = None
        if waiting:
            first = min(s.committed_at or s.updated_at for s in waiting)
            oldest = max(self.clock() - first.timestamp(), 0.0)
        lag_bytes = None
        newest = max((s.commit_lsn for s in waiting if s.commit_lsn is not None), default=None)
        if replica is not None and replica.replay_lsn is not None and newest is not None:
            lag_bytes = max(int(newest) - int(replica.replay_lsn), 0)
        beyond = 0
        if len(pending) >= self.slice:
            counts = await self.manager.backend.status.counts()
            beyond = max(counts[TransactionState.COMMITTED] - len(pending), 0)
        report = ReplicationReport(
            replica,
            len(confirmed),
            len(waiting) + beyond,
            oldest,
            oldest is not None and oldest > self.timeout,
            error,
            lag_bytes,
        )
        return report, confirmed

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is polling in this process."""
        return self._running

    @property
    def confirming(self) -> bool:
        """Whether this process confirms the site's replication now (running and leading)."""
        return self._running and self.leads

    async def run(self) -> None:
        """Poll until :meth:`stop` is called."""
        self._stop.clear()
        self._running = True
        try:
            await self._poll_until_stopped()
        finally:
            self._running = False

    async def _poll_until_stopped(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self._leading is not None:
                    self.leads = await self._leading()
                if self.leads:
                    await self.poll_once()
                failures = 0
            except BackendError as exc:
                raise_if_cancelling()
                # The buffer's stores are unreachable: try again, backing off, and
                # report it; the pending set is safe in the stores.
                failures += 1
                self.last_report = ReplicationReport(None, 0, 0, None, False, str(exc))
                await asyncio.sleep(min(self.poll_interval * 2**failures, 30.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.poll_interval)

    def stop(self) -> None:
        """Ask :meth:`run` to return after its current poll."""
        self._stop.set()
