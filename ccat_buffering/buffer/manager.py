"""The transaction manager: buffer, status, caches, retries and dead letters.

:meth:`TransactionManager.buffer` is the one write a service makes at a
secondary site: queue entry, status and both caches in one atomic group. The
moves after it (the processor's, the replication tracker's, the operators')
are in :mod:`ccat_buffering.buffer._transitions`, a part of the same class.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ccat_buffering.buffer._recent_commits import RecentCommits
from ccat_buffering.buffer._transitions import (
    Delivery,
    Transitions,
    as_json,
    buffered_at,
)
from ccat_buffering.buffer.cache_writes import cache_writes as _cache_writes
from ccat_buffering.buffer.protocols import Backend, CachedRecord, CacheWrite, WriteBatch
from ccat_buffering.buffer.retry import RetryPolicy
from ccat_buffering.conflicts.kinds import Conflict
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.write._codec import decode_value
from ccat_buffering.write.models import DEFAULT_MAX_PAYLOAD_BYTES, Transaction, TransactionStatus
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["Delivery", "Listener", "TransactionManager", "as_json"]


DEFAULT_STATUS_TTL = 3600.0
DEFAULT_CACHE_TTL = 3600.0


class Listener(Protocol):
    """Told of every change of state the manager has made (metrics listen here).

    A listener may also have ``conflicts_found(conflicts)``, told of every
    conflict the site's writes met (decided or rejected).
    """

    def changed(self, statuses: Sequence[TransactionStatus]) -> None:
        """``statuses`` were just stored, each in its new state."""
        ...


def _decode_fields(record: CachedRecord) -> dict[str, Any]:
    return {name: decode_value(value) for name, value in record.fields.items()}


class TransactionManager(Transitions):
    """Buffers transactions and moves them through their states.

    Args:
        backend: The site's stores.
        registry: When given, transactions naming unknown models or fields are
            refused by :meth:`buffer` before anything is written.
        retry_policy: Backoff and attempts for data errors.
        status_ttl: Seconds a terminal status is kept (origin: 3,600).
        cache_ttl: Seconds cached records live unless extended.
        max_payload_bytes: Largest serialised transaction accepted.
        clock: Seconds since the epoch, for the timestamps of statuses.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        registry: ModelRegistry | None = None,
        retry_policy: RetryPolicy | None = None,
        status_ttl: float = DEFAULT_STATUS_TTL,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.listeners: list[Listener] = []
        self.registry = registry
        self.retry_policy = retry_policy or RetryPolicy()
        self.status_ttl = status_ttl
        self.cache_ttl = cache_ttl
        self.max_payload_bytes = max_payload_bytes
        self.unreadable = 0
        """Entries dead-lettered at claim: unreadable, or over the size limit."""
        self.recent_commits = RecentCommits()
        """What this process marked committed, for its replication tracker (which turns it on)."""

    def _tell(self, statuses: Sequence[TransactionStatus]) -> None:
        for listener in self.listeners:
            try:
                listener.changed(statuses)
            except Exception:  # a listener (metrics) must never stop the work
                logging.getLogger(__name__).exception(
                    "a listener failed", extra={"site": self.backend.site}
                )

    def found_conflicts(self, conflicts: Sequence[Conflict]) -> None:
        """Tell the listeners that have ``conflicts_found`` of conflicts just met."""
        if not conflicts:
            return
        for listener in self.listeners:
            hook = getattr(listener, "conflicts_found", None)
            if hook is None:
                continue
            try:
                hook(conflicts)
            except Exception:  # a listener (metrics) must never stop the work
                logging.getLogger(__name__).exception("a listener failed")

    def now(self) -> dt.datetime:
        """The manager's clock as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    # -- what services call -------------------------------------------------

    def _prepare(self, transaction: Transaction) -> tuple[str, list[CacheWrite], TransactionStatus]:
        if not isinstance(transaction, Transaction):
            raise TransactionValidationError(
                f"expected a Transaction (see TransactionBuilder), not {type(transaction).__name__}"
            )
        if self.registry is not None:
            transaction = self.registry.convert(transaction)
        payload = transaction.to_json(self.max_payload_bytes)
        return (
            payload,
            _cache_writes(transaction),
            buffered_at(transaction, self.now()),
        )

    def _stage(
        self, batch: WriteBatch, payload: str, writes: list[CacheWrite], status: TransactionStatus
    ) -> None:
        """Stage one prepared transaction: its queue entry, status and cache writes."""
        batch.push(payload)
        batch.put_status(status, self.status_ttl)
        batch.write_cache(status.transaction_id, writes, self.cache_ttl)

    async def buffer(self, transaction: Transaction) -> TransactionStatus:
        """Buffer a transaction: queue entry, status and caches, all or nothing.

        Args:
            transaction: From :meth:`TransactionBuilder.build`.

        Returns:
            Its status, ``buffered``.

        Raises:
            TransactionValidationError: Bad input; nothing was written.
            BackendUnavailableError: The store could not be reached, or its reply
                was lost: the write may or may not have been made. Submitting the
                same transaction again is safe; the ledger applies it once.
            BackendError: The store refused the write; nothing was written.
        """
        # buffer_many([transaction]) without its lists: one per write a service makes.
        prepared = self._prepare(transaction)
        async with self.backend.atomic() as batch:
            self._stage(batch, *prepared)
        status = prepared[2]
        if self.listeners:
            self._tell([status])
        return status

    async def buffer_many(self, transactions: Sequence[Transaction]) -> list[TransactionStatus]:
        """Buffer several transactions in order, in one atomic group.

        All are validated before anything is written: one bad transaction
        means none is buffered.

        Args:
            transactions: In the order they must apply.

        Returns:
            Their statuses, in the same order.
        """
        prepared = [self._prepare(tx) for tx in transactions]
        async with self.backend.atomic() as batch:
            for one in prepared:
                self._stage(batch, *one)
        statuses = [status for _, _, status in prepared]
        self._tell(statuses)
        return statuses

    async def status(self, transaction_id: str) -> TransactionStatus | None:
        """The status of a transaction, or ``None`` if unknown or expired."""
        return await self.backend.status.get(transaction_id)

    async def cached_record(self, model: str, record_id: str) -> dict[str, Any] | None:
        """A buffered record's fields as the site should see them, or ``None``.

        ``None`` too when the record's buffered state is "deleted".
        """
        record = await self.backend.cache.get(model, record_id)
        if record is None or record.deleted:
            return None
        return _decode_fields(record)

    async def cached_records(self, model: str) -> list[CachedRecord]:
        """Every buffered record of ``model`` (fields still encoded)."""
        return await self.backend.cache.list(model)
