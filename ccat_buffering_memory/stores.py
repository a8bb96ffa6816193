"""The stores of the in-memory backend, and its write batch: one site's state, by role.

Each store is a view of the one :class:`~ccat_buffering_memory._state.SiteState`
of its site; :class:`MemoryWriteBatch` stages the calls of an atomic group
and applies them together. :class:`~ccat_buffering_memory.backend.MemoryBackend`
bundles them.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ccat_buffering.buffer import checks
from ccat_buffering.buffer.protocols import (
    BufferStats,
    CachedRecord,
    CacheWrite,
    Claim,
    DeadLetter,
    LeaseInfo,
)
from ccat_buffering.write.models import TransactionState, TransactionStatus
from ccat_buffering_memory._state import SiteState, field_value_key

__all__ = [
    "MemoryBufferStore",
    "MemoryCacheStore",
    "MemoryDeadLetterStore",
    "MemoryProcessorLease",
    "MemoryStatusStore",
    "MemoryWriteBatch",
]


class _SiteStateStore:
    """A store of the site: a view over the one :class:`SiteState` the backend holds."""

    def __init__(self, state: SiteState) -> None:
        self._state = state


class MemoryBufferStore(_SiteStateStore):
    """:class:`~ccat_buffering.buffer.protocols.BufferStore` in memory."""

    async def push(self, payloads: Sequence[str]) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.push`."""
        self._state.push(checks.check_push(payloads))

    async def claim(self, count: int, lease_seconds: float) -> list[Claim]:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.claim`."""
        checks.check_claim(count, lease_seconds)
        return self._state.claim(count, lease_seconds)

    async def ack(self, receipts: Sequence[str]) -> int:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.ack`."""
        return self._state.ack(checks.check_receipts(receipts))

    async def retry_later(self, receipts: Sequence[str], delay_seconds: float) -> int:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.retry_later`."""
        return self._state.retry_later(checks.check_retry(receipts, delay_seconds), delay_seconds)

    async def dead_letter(
        self, receipt: str, reason: str, transaction_id: str | None = None
    ) -> bool:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.dead_letter`."""
        checks.check_dead_letter(receipt, reason, transaction_id)
        return self._state.dead_letter(receipt, reason, transaction_id)

    async def recover(self, *, include_unexpired: bool = False) -> int:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.recover`."""
        return self._state.recover(include_unexpired)

    async def stats(self) -> BufferStats:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.stats`."""
        state = self._state
        held = state.held_until if state.held_until and state.held_until > state.clock() else None
        return BufferStats(len(state.queue), len(state.in_flight), len(state.letters), held)


class MemoryDeadLetterStore(_SiteStateStore):
    """:class:`~ccat_buffering.buffer.protocols.DeadLetterStore` in memory."""

    async def list(self, offset: int = 0, limit: int | None = None) -> list[DeadLetter]:
        """See :meth:`ccat_buffering.buffer.protocols.DeadLetterStore.list`."""
        letters = list(self._state.letters.values())
        return letters[offset : None if limit is None else offset + limit]

    async def get(self, letter_id: str) -> DeadLetter | None:
        """See :meth:`ccat_buffering.buffer.protocols.DeadLetterStore.get`."""
        return self._state.letters.get(letter_id)

    async def letters_after(
        self, after: str | None, limit: int
    ) -> tuple[builtins.list[DeadLetter], str | None]:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsLetterPaging.letters_after`."""
        return self._state.letters_after(after, limit)

    async def replay(self, letter_ids: Sequence[str] | None = None) -> builtins.list[DeadLetter]:
        """See :meth:`ccat_buffering.buffer.protocols.DeadLetterStore.replay`."""
        return self._state.replay(checks.check_letter_ids(letter_ids))

    async def purge(self, letter_ids: Sequence[str] | None = None) -> int:
        """See :meth:`ccat_buffering.buffer.protocols.DeadLetterStore.purge`."""
        return self._state.purge(checks.check_letter_ids(letter_ids))


class MemoryStatusStore(_SiteStateStore):
    """:class:`~ccat_buffering.buffer.protocols.StatusStore` in memory."""

    async def get(self, transaction_id: str) -> TransactionStatus | None:
        """See :meth:`ccat_buffering.buffer.protocols.StatusStore.get`."""
        return self._state.live_status(transaction_id)

    async def get_many(self, transaction_ids: Sequence[str]) -> list[TransactionStatus | None]:
        """See :meth:`ccat_buffering.buffer.protocols.StatusStore.get_many`."""
        return [self._state.live_status(tid) for tid in transaction_ids]

    async def put(self, status: TransactionStatus, ttl_seconds: float) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.StatusStore.put`."""
        checks.check_status_put(status, ttl_seconds)
        self._state.put_status(status, ttl_seconds)

    async def ids(self, state: TransactionState, limit: int | None = None) -> list[str]:
        """See :meth:`ccat_buffering.buffer.protocols.StatusStore.ids`."""
        return self._state.status_ids(TransactionState(state))[:limit]

    async def ids_after(
        self, state: TransactionState, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsStatusPaging.ids_after`."""
        return self._state.status_page(TransactionState(state), after, limit)

    async def counts(self) -> dict[TransactionState, int]:
        """See :meth:`ccat_buffering.buffer.protocols.StatusStore.counts`."""
        return {state: len(self._state.status_ids(state)) for state in TransactionState}

    # -- SupportsIdempotencyKeys: one critical section each, as Redis' single SET --

    def _live_key(self, digest: str) -> str | None:
        found = self._state.idempotency.get(digest)
        if found is None:
            return None
        record, expires_at = found
        if expires_at <= self._state.clock():
            del self._state.idempotency[digest]
            return None
        return record

    async def claim_key(self, digest: str, record: str, ttl_seconds: float) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsIdempotencyKeys.claim_key`."""
        checks.check_duration(ttl_seconds, "ttl_seconds")
        live = self._live_key(digest)
        if live is None:
            self._state.idempotency[digest] = (record, self._state.clock() + ttl_seconds)
        return live

    async def get_key(self, digest: str) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsIdempotencyKeys.get_key`."""
        return self._live_key(digest)

    async def put_key(self, digest: str, record: str, ttl_seconds: float) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsIdempotencyKeys.put_key`."""
        checks.check_duration(ttl_seconds, "ttl_seconds")
        self._state.idempotency[digest] = (record, self._state.clock() + ttl_seconds)

    async def drop_key(self, digest: str) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsIdempotencyKeys.drop_key`."""
        self._state.idempotency.pop(digest, None)


class MemoryCacheStore(_SiteStateStore):
    """:class:`~ccat_buffering.buffer.protocols.CacheStore` in memory."""

    async def write(
        self, transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float
    ) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.write`."""
        writes = checks.check_cache_write(transaction_id, writes, ttl_seconds)
        self._state.write_cache(transaction_id, writes, ttl_seconds)

    def _view(self, model: str, record_id: str) -> CachedRecord | None:
        record = self._state.live_record((model, record_id))
        if record is None:
            return None
        return CachedRecord(
            model,
            record_id,
            dict(record.fields),
            record.created,
            record.deleted,
            tuple(record.transaction_ids),
            record.expires_at,
        )

    async def get(self, model: str, record_id: str) -> CachedRecord | None:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.get`."""
        return self._view(model, record_id)

    async def list(self, model: str) -> list[CachedRecord]:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.list`."""
        ids = list(self._state.model_index.get(model, {}))
        return [view for rid in ids if (view := self._view(model, rid)) is not None]

    async def get_many(
        self, model: str, record_ids: Sequence[str]
    ) -> builtins.list[CachedRecord | None]:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.get_many`."""
        return [self._view(model, rid) for rid in record_ids]

    async def find(self, model: str, equals: Mapping[str, Any]) -> builtins.list[CachedRecord]:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.find`."""
        found: dict[str, None] = {}
        for name, value in equals.items():
            found.update(self._state.field_index.get(field_value_key(model, name, value), {}))
        live = [(rid, r) for rid in found if (r := self._state.live_record((model, rid)))]
        live.sort(key=lambda pair: pair[1].order)
        return [view for rid, _ in live if (view := self._view(model, rid)) is not None]

    async def created_by(self, model: str, record_id: str) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.created_by`."""
        return self._state.created_by((model, record_id))

    async def extend(self, transaction_ids: Sequence[str], ttl_seconds: float) -> int:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.extend`."""
        ids = checks.check_cache_extend(transaction_ids, ttl_seconds)
        return self._state.extend(ids, ttl_seconds)

    async def release(self, transaction_ids: Sequence[str]) -> int:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.release`."""
        return self._state.release(checks.check_cache_release(transaction_ids))


class MemoryProcessorLease(_SiteStateStore):
    """:class:`~ccat_buffering.buffer.protocols.ProcessorLease` in memory."""

    async def acquire(self, holder: str, ttl_seconds: float) -> bool:
        """See :meth:`ccat_buffering.buffer.protocols.ProcessorLease.acquire`."""
        checks.check_lease(holder, ttl_seconds)
        lease = self._state.live_lease()
        if lease is not None and lease[0] != holder:
            return False
        self._state.lease = (holder, self._state.clock() + ttl_seconds)
        return True

    async def renew(self, holder: str, ttl_seconds: float) -> bool:
        """See :meth:`ccat_buffering.buffer.protocols.ProcessorLease.renew`."""
        checks.check_lease(holder, ttl_seconds)
        lease = self._state.live_lease()
        if lease is None or lease[0] != holder:
            return False
        self._state.lease = (holder, self._state.clock() + ttl_seconds)
        return True

    async def release(self, holder: str) -> bool:
        """See :meth:`ccat_buffering.buffer.protocols.ProcessorLease.release`."""
        checks.check_lease_holder(holder)
        lease = self._state.live_lease()
        if lease is None or lease[0] != holder:
            return False
        self._state.lease = None
        return True

    async def current(self) -> LeaseInfo | None:
        """See :meth:`ccat_buffering.buffer.protocols.ProcessorLease.current`."""
        lease = self._state.live_lease()
        return None if lease is None else LeaseInfo(*lease)

    async def publish_report(self, report: str, ttl_seconds: float) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsProcessorReports.publish_report`."""
        checks.check_report(report, ttl_seconds)
        self._state.report = (report, self._state.clock() + ttl_seconds)

    async def processor_report(self) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsProcessorReports.processor_report`."""
        report = self._state.report
        if report is None or report[1] <= self._state.clock():
            return None
        return report[0]


class MemoryWriteBatch:
    """:class:`~ccat_buffering.buffer.protocols.WriteBatch` that stages closures over the state."""

    def __init__(self, state: SiteState) -> None:
        self._state = state
        self.ops: list[Callable[[], Any]] = []

    def push(self, payload: str) -> None:
        """Stage a push."""
        checks.check_push([payload])
        self.ops.append(lambda: self._state.push([payload]))

    def ack(self, receipt: str) -> None:
        """Stage an ack."""
        checks.check_receipts([receipt])
        self.ops.append(lambda: self._state.ack([receipt]))

    def retry_later(self, receipts: Sequence[str], delay_seconds: float) -> None:
        """Stage a retry."""
        receipts = checks.check_retry(receipts, delay_seconds)
        self.ops.append(lambda: self._state.retry_later(receipts, delay_seconds))

    def dead_letter(self, receipt: str, reason: str, transaction_id: str | None) -> None:
        """Stage a move to the dead letters."""
        checks.check_dead_letter(receipt, reason, transaction_id)
        self.ops.append(lambda: self._state.dead_letter(receipt, reason, transaction_id))

    def replay(self, letter_id: str) -> None:
        """Stage the replay of one letter."""
        checks.check_letter_ids([letter_id])
        self.ops.append(lambda: self._state.replay([letter_id]))

    def put_status(self, status: TransactionStatus, ttl_seconds: float) -> None:
        """Stage a status."""
        checks.check_status_put(status, ttl_seconds)
        self.ops.append(lambda: self._state.put_status(status, ttl_seconds))

    def put_statuses(self, statuses: Sequence[TransactionStatus], ttl_seconds: float) -> None:
        """Stage statuses, as :meth:`put_status` each, in order (all checked first)."""
        statuses = list(statuses)
        for status in statuses:
            checks.check_status_put(status, ttl_seconds)
        for status in statuses:
            self.ops.append(functools.partial(self._state.put_status, status, ttl_seconds))

    def write_cache(
        self, transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float
    ) -> None:
        """Stage cache writes."""
        writes = checks.check_cache_write(transaction_id, writes, ttl_seconds)
        self.ops.append(lambda: self._state.write_cache(transaction_id, writes, ttl_seconds))

    def release_cache(self, transaction_ids: Sequence[str]) -> None:
        """Stage a cache release."""
        ids = checks.check_cache_release(transaction_ids)
        self.ops.append(lambda: self._state.release(ids))
