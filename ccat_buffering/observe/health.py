"""A site at a glance: one model for services, the CLI and probes.

:func:`collect` reads the stores, the processor (in this process, or the
report the draining processor publishes from another one) and the replica,
and lists what an operator must look at. A site with warnings is not
healthy; ``ccat-buffering status`` exits non-zero on it, so it can serve as
a health probe.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from typing import Any

from pydantic import BaseModel, ValidationError, computed_field

from ccat_buffering.buffer import audit as audit_log
from ccat_buffering.buffer.counts import BufferCounts
from ccat_buffering.buffer.protocols import (
    AuditProgress,
    Backend,
    MemoryReport,
    SupportsProcessorReports,
)
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.confirm.replication import ReplicationReport, ReplicationTracker
from ccat_buffering.drain import operator_pause
from ccat_buffering.drain.processor import BackgroundProcessor, ProcessorHealth, ProcessorState
from ccat_buffering.masking import mask_mapping, mask_text, mask_url
from ccat_buffering.observe._health_reads import (
    WATCH_TIMEOUT,
    bounded,
    buffer_warnings,
    key_warnings,
    memory,
    oldest_waiting,
)
from ccat_buffering.observe.buffer_loss import BufferWatch
from ccat_buffering.write.models import TransactionState, utc_now

__all__ = ["NO_REPLICA_NOTICE", "BufferHealth", "Health", "ReplicationHealth", "collect"]

NO_REPLICA_NOTICE = (
    "no replica_url: a secondary site without a replica reads from the main database, so "
    "while the link is down reads see the buffered records only"
)
"""What health says, and the coordinator logs at start, of a secondary site without a replica."""

RECENT_ACTIONS = 5
"""Operators' actions that health shows (``ccat-buffering audit`` shows them all)."""


class BufferHealth(BufferCounts):
    """The site's buffer (its counts: see :class:`~ccat_buffering.buffer.counts.BufferCounts`).

    Attributes:
        retry_held_seconds: Seconds before the held head may be retried, if held.
        oldest_waiting_seconds: Age of the oldest transaction not yet committed.
        memory: The store's memory and how long it can keep buffering, where
            the store can tell.
    """

    retry_held_seconds: float | None = None
    oldest_waiting_seconds: float | None = None
    memory: MemoryReport | None = None


class ReplicationHealth(BaseModel):
    """What the replica shows of the site's commits.

    Attributes:
        replay_lsn: The replica's last replayed WAL position (text), if known.
        standby: The replica is replaying WAL (``False``: not a standby, or
            promoted; it confirms nothing).
        lag_bytes: WAL between the replay position and the newest pending commit.
        lag_seconds: Time since the replica's last replayed commit.
        pending: Committed transactions not yet seen on the replica.
        oldest_pending_seconds: How long the oldest of them has waited.
        lagging: It has waited longer than the replication timeout.
        error: Why the replica could not be asked.
    """

    replay_lsn: str | None = None
    standby: bool | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    pending: int = 0
    oldest_pending_seconds: float | None = None
    lagging: bool = False
    error: str | None = None

    @classmethod
    def from_report(cls, report: ReplicationReport) -> ReplicationHealth:
        """The health view of a tracker's report."""
        replica = report.replica
        return cls(
            replay_lsn=None
            if replica is None or replica.replay_lsn is None
            else str(replica.replay_lsn),
            standby=None if replica is None else replica.standby,
            lag_bytes=report.lag_bytes,
            lag_seconds=None if replica is None else replica.lag_seconds,
            pending=report.pending,
            oldest_pending_seconds=report.oldest_pending_seconds,
            lagging=report.lagging,
            error=None if report.error is None else mask_text(report.error),
        )


class Health(BaseModel):
    """A site at a glance.

    Attributes:
        site: The site's name.
        site_type: ``main`` or ``secondary``.
        backend: The backend's URL, password masked.
        database: The main database's URL, password masked.
        replica: The replica's URL, password masked.
        checked_at: When this was put together.
        buffer: The buffer's counts.
        states: Live statuses per state.
        processor: The draining processor, as it reports itself.
        replication: What the replica shows.
        warnings: What an operator must look at.
        conflicts: Transactions of this site waiting for an operator's
            ``conflicts resolve`` (``conflicted``: rejected, or waiting behind one).
        notices: What an operator should know of the site's set-up; they do
            not make it unhealthy (a site without a replica, for one).
        actions: The latest operators' actions, newest first (see
            :mod:`ccat_buffering.buffer.audit`).
        operator_pause: Who paused the drain, when and why, while an
            operator's pause is in force (see :mod:`ccat_buffering.drain.operator_pause`).
        healthy: No warnings (serialised with the rest).
    """

    site: str
    site_type: str
    backend: str
    database: str
    replica: str | None = None
    checked_at: dt.datetime
    buffer: BufferHealth
    states: dict[str, int]
    processor: ProcessorHealth
    replication: ReplicationHealth
    warnings: list[str]
    conflicts: int = 0
    notices: list[str] = []
    actions: list[audit_log.AuditEntry] = []
    operator_pause: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def healthy(self) -> bool:
        """Nothing needs an operator's attention."""
        return not self.warnings


def _holder_is_dead(holder: str) -> bool:
    """Whether a lease token names a process on this host that no longer runs."""
    parts = holder.rsplit("-", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def _processor(backend: Backend, processor: BackgroundProcessor | None) -> ProcessorHealth:
    if processor is not None and processor.state is not ProcessorState.STOPPED:
        return await processor.health()
    if isinstance(backend.lease, SupportsProcessorReports):
        text = await backend.lease.processor_report()
        if text is not None:
            try:
                return ProcessorHealth.model_validate_json(text)
            except ValidationError:
                pass
    if processor is None:
        return ProcessorHealth(state=ProcessorState.STOPPED, holder="-")
    return await processor.health()


def _gone(worker: ProcessorHealth, lease_holder: str | None) -> ProcessorHealth:
    """A published report of a worker that no longer holds the lease, shown as gone.

    The report outlives its worker (it expires after twice the lease), so a
    killed worker would otherwise show as ``running`` for half a minute.
    """
    if worker.state is ProcessorState.STOPPED:
        return worker
    if lease_holder == worker.holder and not _holder_is_dead(worker.holder):
        return worker
    why = "its process no longer runs" if _holder_is_dead(worker.holder) else "it lost the lease"
    return worker.model_copy(
        update={"state": ProcessorState.STOPPED, "cause": f"gone: {worker.holder} ({why})"}
    )


async def _replication(tracker: ReplicationTracker) -> ReplicationHealth:
    if tracker.confirming:
        report = tracker.last_report
    else:
        try:
            report = await bounded(tracker.snapshot(), WATCH_TIMEOUT)
        except TimeoutError as exc:
            return ReplicationHealth(error=str(exc))
    return ReplicationHealth() if report is None else ReplicationHealth.from_report(report)


async def collect(
    settings: BufferingSettings,
    backend: Backend,
    processor: BackgroundProcessor | None,
    tracker: ReplicationTracker,
    *,
    audit: bool = False,
    watch: BufferWatch | None = None,
    audit_progress: AuditProgress | None = None,
) -> Health:
    """Put a site's health together.

    Args:
        settings: The site's settings.
        backend: The site's stores.
        processor: This process's processor (its report is used while it runs;
            otherwise the one the draining processor published); ``None`` for
            a process that only looks (the operator commands). A published
            report whose worker no longer holds the lease, or whose process
            is gone, shows as ``stopped`` with the cause ``gone: ...``.
        tracker: This process's tracker (its last report is used while it
            runs; otherwise the replica is asked once, changing nothing).
        audit: Look for keys without a TTL (scans every key of the site: slow
            on a large buffer, so off unless asked for).
        watch: Compares the buffer with the main database's memory of it
            (read only): a loss of buffered state is a warning.
        audit_progress: Told how far the audit's scan has gone (see
            :meth:`~ccat_buffering.buffer.protocols.SupportsKeyAudit.audit_keys`).

    Returns:
        The health, with warnings.
    """
    # One read first, alone: a client's first call connects (a Cluster client
    # learns its slots), and calls racing that start broke a password-protected
    # Cluster's connections. Then every read at once: the answer takes as long as
    # the slowest, not their sum (the main database's look may be a link away).
    stats = await backend.buffer.stats()
    read_oldest = asyncio.ensure_future(oldest_waiting(backend))
    read_memory = asyncio.ensure_future(memory(backend))
    read_worker = asyncio.ensure_future(_processor(backend, processor))
    read_lease = asyncio.ensure_future(backend.lease.current())
    read_replication = asyncio.ensure_future(_replication(tracker))
    read_pause = asyncio.ensure_future(operator_pause.current(backend))
    read_store = asyncio.ensure_future(buffer_warnings(settings, backend, watch))
    read_keys = asyncio.ensure_future(key_warnings(settings, backend, audit, audit_progress))
    read_counts = asyncio.ensure_future(backend.status.counts())
    read_actions = asyncio.ensure_future(audit_log.list(backend, RECENT_ACTIONS))
    # A read that fails raises as it is (the CLI names its error), not in a group.
    reads = (
        read_oldest,
        read_memory,
        read_worker,
        read_lease,
        read_replication,
        read_pause,
        read_store,
        read_keys,
        read_counts,
        read_actions,
    )
    try:
        await asyncio.gather(*reads)
    except BaseException:
        # The others are not left running (nor their errors unretrieved).
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        raise
    worker, lease = read_worker.result(), read_lease.result()
    replication, held, counts = read_replication.result(), read_pause.result(), read_counts.result()
    now = utc_now().timestamp()
    buffer = BufferHealth(
        **BufferCounts.of(stats),
        retry_held_seconds=None if stats.held_until is None else max(stats.held_until - now, 0.0),
        oldest_waiting_seconds=read_oldest.result(),
        memory=read_memory.result(),
    )
    if processor is None or worker.holder != processor.holder:
        worker = _gone(worker, None if lease is None else lease.holder)
    worker = worker.model_copy(
        update={
            "lease_holder": None if lease is None else lease.holder,
            **BufferCounts.of(stats),
        }
    )
    warnings: list[str] = []
    if held is not None:
        warnings.append(f"drain {held.cause}; `ccat-buffering resume` lets it go on")
    if worker.state is ProcessorState.PAUSED and (held is None or worker.cause != held.cause):
        warnings.append(f"processor paused: {mask_text(worker.cause or '')}")
    if lease is not None and _holder_is_dead(lease.holder):
        warnings.append(f"the lease is held by a worker that is gone: {lease.holder}")
    if settings.site_type == "secondary" and lease is None and buffer.depth:
        warnings.append(f"no processor holds the lease and {buffer.depth} transaction(s) wait")
    if buffer.dead_letters:
        warnings.append(f"{buffer.dead_letters} transaction(s) in the dead-letter queue")
    if replication.lagging:
        warnings.append(
            f"replication lagging: {replication.pending} pending, oldest "
            f"{replication.oldest_pending_seconds or 0:.1f} s"
            + ("" if replication.lag_bytes is None else ", ")
            + ("" if replication.lag_bytes is None else f"{replication.lag_bytes} bytes behind")
        )
    if replication.standby is False:
        warnings.append("replica is not replaying WAL (not a standby, or promoted)")
    if replication.error:
        warnings.append(f"replica unreachable: {replication.error}")
    warnings += read_store.result() + read_keys.result()
    conflicts = counts.get(TransactionState.CONFLICTED, 0)
    if conflicts:
        warnings.append(f"{conflicts} unresolved conflict(s): see `ccat-buffering conflicts list`")
    health = Health(
        site=backend.site,
        site_type=settings.site_type,
        backend=mask_url(settings.backend_url) or "",
        database=mask_url(settings.database_url) or "",
        replica=mask_url(settings.replica_url),
        checked_at=utc_now(),
        buffer=buffer,
        states={str(state): n for state, n in counts.items()},
        processor=worker,
        replication=replication,
        warnings=warnings,
        conflicts=conflicts,
        notices=[NO_REPLICA_NOTICE] if _without_replica(settings) else [],
        actions=read_actions.result(),
        operator_pause=None if held is None else held.cause,
    )
    # Masked whole, whatever a part put in it (a worker's cause, a driver's message).
    return Health.model_validate(mask_mapping(health.model_dump(mode="json")))


def _without_replica(settings: BufferingSettings) -> bool:
    return settings.site_type == "secondary" and not settings.replica_url


def as_json(health: Health) -> dict[str, Any]:
    """The health as JSON data, ``healthy`` included."""
    return health.model_dump(mode="json")
