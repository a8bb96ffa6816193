"""The in-memory backend: every store of one site, held in this process.

It is a complete implementation, not a mock: TTLs, FIFO order, leases and
atomic groups behave as the Redis backend's do, against an injectable clock,
and it passes the same contract suite. What it cannot do is outlive its
process, so a site in production uses Redis.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ccat_buffering import checks
from ccat_buffering._closing import AsyncClosing
from ccat_buffering.key_schema import SUFFIXES
from ccat_buffering.models import TransactionState, TransactionStatus, check_identifier
from ccat_buffering.protocols import (
    BufferStats,
    CachedRecord,
    CacheWrite,
    Claim,
    DeadLetter,
    KeyInfo,
    LeaseInfo,
)
from ccat_buffering_memory._state import Clock, SiteState, field_value_key

__all__ = ["MemoryBackend"]


class _SiteStateStore:
    """A store of the site: a view over the one :class:`SiteState` the backend holds."""

    def __init__(self, state: SiteState) -> None:
        self._state = state


class MemoryBufferStore(_SiteStateStore):
    """:class:`~ccat_buffering.protocols.BufferStore` in memory."""

    async def push(self, payloads: Sequence[str]) -> None:
        """See :meth:`ccat_buffering.protocols.BufferStore.push`."""
        self._state.push(checks.check_push(payloads))

    async def claim(self, count: int, lease_seconds: float) -> list[Claim]:
        """See :meth:`ccat_buffering.protocols.BufferStore.claim`."""
        checks.check_claim(count, lease_seconds)
        return self._state.claim(count, lease_seconds)

    async def ack(self, receipts: Sequence[str]) -> int:
        """See :meth:`ccat_buffering.protocols.BufferStore.ack`."""
        return self._state.ack(checks.check_receipts(receipts))

    async def retry_later(self, receipts: Sequence[str], delay_seconds: float) -> int:
        """See :meth:`ccat_buffering.protocols.BufferStore.retry_later`."""
        return self._state.retry_later(checks.check_retry(receipts, delay_seconds), delay_seconds)

    async def dead_letter(
        self, receipt: str, reason: str, transaction_id: str | None = None
    ) -> bool:
        """See :meth:`ccat_buffering.protocols.BufferStore.dead_letter`."""
        checks.check_dead_letter(receipt, reason, transaction_id)
        return self._state.dead_letter(receipt, reason, transaction_id)

    async def recover(self, *, include_unexpired: bool = False) -> int:
        """See :meth:`ccat_buffering.protocols.BufferStore.recover`."""
        return self._state.recover(include_unexpired)

    async def stats(self) -> BufferStats:
        """See :meth:`ccat_buffering.protocols.BufferStore.stats`."""
        state = self._state
        held = state.held_until if state.held_until and state.held_until > state.clock() else None
        return BufferStats(len(state.queue), len(state.in_flight), len(state.letters), held)


class MemoryDeadLetterStore(_SiteStateStore):
    """:class:`~ccat_buffering.protocols.DeadLetterStore` in memory."""

    async def list(self, offset: int = 0, limit: int | None = None) -> list[DeadLetter]:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.list`."""
        letters = list(self._state.letters.values())
        return letters[offset : None if limit is None else offset + limit]

    async def get(self, letter_id: str) -> DeadLetter | None:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.get`."""
        return self._state.letters.get(letter_id)

    async def letters_after(
        self, after: str | None, limit: int
    ) -> tuple[builtins.list[DeadLetter], str | None]:
        """See :meth:`ccat_buffering.protocols.SupportsLetterPaging.letters_after`."""
        return self._state.letters_after(after, limit)

    async def replay(self, letter_ids: Sequence[str] | None = None) -> builtins.list[DeadLetter]:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.replay`."""
        return self._state.replay(checks.check_letter_ids(letter_ids))

    async def purge(self, letter_ids: Sequence[str] | None = None) -> int:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.purge`."""
        return self._state.purge(checks.check_letter_ids(letter_ids))


class MemoryStatusStore(_SiteStateStore):
    """:class:`~ccat_buffering.protocols.StatusStore` in memory."""

    async def get(self, transaction_id: str) -> TransactionStatus | None:
        """See :meth:`ccat_buffering.protocols.StatusStore.get`."""
        return self._state.live_status(transaction_id)

    async def get_many(self, transaction_ids: Sequence[str]) -> list[TransactionStatus | None]:
        """See :meth:`ccat_buffering.protocols.StatusStore.get_many`."""
        return [self._state.live_status(tid) for tid in transaction_ids]

    async def put(self, status: TransactionStatus, ttl_seconds: float) -> None:
        """See :meth:`ccat_buffering.protocols.StatusStore.put`."""
        checks.check_status_put(status, ttl_seconds)
        self._state.put_status(status, ttl_seconds)

    async def ids(self, state: TransactionState, limit: int | None = None) -> list[str]:
        """See :meth:`ccat_buffering.protocols.StatusStore.ids`."""
        return self._state.status_ids(TransactionState(state))[:limit]

    async def ids_after(
        self, state: TransactionState, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """See :meth:`ccat_buffering.protocols.SupportsStatusPaging.ids_after`."""
        return self._state.status_page(TransactionState(state), after, limit)

    async def counts(self) -> dict[TransactionState, int]:
        """See :meth:`ccat_buffering.protocols.StatusStore.counts`."""
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
        """See :meth:`ccat_buffering.protocols.SupportsIdempotencyKeys.claim_key`."""
        checks.check_duration(ttl_seconds, "ttl_seconds")
        live = self._live_key(digest)
        if live is None:
            self._state.idempotency[digest] = (record, self._state.clock() + ttl_seconds)
        return live

    async def get_key(self, digest: str) -> str | None:
        """See :meth:`ccat_buffering.protocols.SupportsIdempotencyKeys.get_key`."""
        return self._live_key(digest)

    async def put_key(self, digest: str, record: str, ttl_seconds: float) -> None:
        """See :meth:`ccat_buffering.protocols.SupportsIdempotencyKeys.put_key`."""
        checks.check_duration(ttl_seconds, "ttl_seconds")
        self._state.idempotency[digest] = (record, self._state.clock() + ttl_seconds)

    async def drop_key(self, digest: str) -> None:
        """See :meth:`ccat_buffering.protocols.SupportsIdempotencyKeys.drop_key`."""
        self._state.idempotency.pop(digest, None)


class MemoryCacheStore(_SiteStateStore):
    """:class:`~ccat_buffering.protocols.CacheStore` in memory."""

    async def write(
        self, transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float
    ) -> None:
        """See :meth:`ccat_buffering.protocols.CacheStore.write`."""
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
        """See :meth:`ccat_buffering.protocols.CacheStore.get`."""
        return self._view(model, record_id)

    async def list(self, model: str) -> list[CachedRecord]:
        """See :meth:`ccat_buffering.protocols.CacheStore.list`."""
        ids = list(self._state.model_index.get(model, {}))
        return [view for rid in ids if (view := self._view(model, rid)) is not None]

    async def get_many(
        self, model: str, record_ids: Sequence[str]
    ) -> builtins.list[CachedRecord | None]:
        """See :meth:`ccat_buffering.protocols.CacheStore.get_many`."""
        return [self._view(model, rid) for rid in record_ids]

    async def find(self, model: str, equals: Mapping[str, Any]) -> builtins.list[CachedRecord]:
        """See :meth:`ccat_buffering.protocols.CacheStore.find`."""
        found: dict[str, None] = {}
        for name, value in equals.items():
            found.update(self._state.field_index.get(field_value_key(model, name, value), {}))
        live = [(rid, r) for rid in found if (r := self._state.live_record((model, rid)))]
        live.sort(key=lambda pair: pair[1].order)
        return [view for rid, _ in live if (view := self._view(model, rid)) is not None]

    async def created_by(self, model: str, record_id: str) -> str | None:
        """See :meth:`ccat_buffering.protocols.CacheStore.created_by`."""
        return self._state.created_by((model, record_id))

    async def extend(self, transaction_ids: Sequence[str], ttl_seconds: float) -> int:
        """See :meth:`ccat_buffering.protocols.CacheStore.extend`."""
        ids = checks.check_cache_extend(transaction_ids, ttl_seconds)
        return self._state.extend(ids, ttl_seconds)

    async def release(self, transaction_ids: Sequence[str]) -> int:
        """See :meth:`ccat_buffering.protocols.CacheStore.release`."""
        return self._state.release(checks.check_cache_release(transaction_ids))


class MemoryProcessorLease(_SiteStateStore):
    """:class:`~ccat_buffering.protocols.ProcessorLease` in memory."""

    async def acquire(self, holder: str, ttl_seconds: float) -> bool:
        """See :meth:`ccat_buffering.protocols.ProcessorLease.acquire`."""
        checks.check_lease(holder, ttl_seconds)
        lease = self._state.live_lease()
        if lease is not None and lease[0] != holder:
            return False
        self._state.lease = (holder, self._state.clock() + ttl_seconds)
        return True

    async def renew(self, holder: str, ttl_seconds: float) -> bool:
        """See :meth:`ccat_buffering.protocols.ProcessorLease.renew`."""
        checks.check_lease(holder, ttl_seconds)
        lease = self._state.live_lease()
        if lease is None or lease[0] != holder:
            return False
        self._state.lease = (holder, self._state.clock() + ttl_seconds)
        return True

    async def release(self, holder: str) -> bool:
        """See :meth:`ccat_buffering.protocols.ProcessorLease.release`."""
        checks.check_lease_holder(holder)
        lease = self._state.live_lease()
        if lease is None or lease[0] != holder:
            return False
        self._state.lease = None
        return True

    async def current(self) -> LeaseInfo | None:
        """See :meth:`ccat_buffering.protocols.ProcessorLease.current`."""
        lease = self._state.live_lease()
        return None if lease is None else LeaseInfo(*lease)

    async def publish_report(self, report: str, ttl_seconds: float) -> None:
        """See :meth:`ccat_buffering.protocols.SupportsProcessorReports.publish_report`."""
        checks.check_report(report, ttl_seconds)
        self._state.report = (report, self._state.clock() + ttl_seconds)

    async def processor_report(self) -> str | None:
        """See :meth:`ccat_buffering.protocols.SupportsProcessorReports.processor_report`."""
        report = self._state.report
        if report is None or report[1] <= self._state.clock():
            return None
        return report[0]


class MemoryWriteBatch:
    """:class:`~ccat_buffering.protocols.WriteBatch` that stages closures over the state."""

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


class MemoryBackend(AsyncClosing):
    """Every store of one site, in this process.

    Args:
        site: The site's name (a plain identifier).
        clock: Returns the current time in seconds; inject a fake one in tests
            and every TTL and lease follows it exactly.
    """

    def __init__(self, site: str, clock: Clock = time.time) -> None:
        self.site = check_identifier(site, "site name")
        self._state = SiteState(clock)
        self.buffer = MemoryBufferStore(self._state)
        self.dead_letters = MemoryDeadLetterStore(self._state)
        self.status = MemoryStatusStore(self._state)
        self.cache = MemoryCacheStore(self._state)
        self.lease = MemoryProcessorLease(self._state)
        self._audit: list[str] = []  # newest first, as the Redis list
        self._charts: list[str] = []  # newest first, as the Redis list
        self._pause: str | None = None

    @classmethod
    def from_url(cls, url: str, *, site: str, **options: Any) -> MemoryBackend:
        """Open a new, empty backend for ``memory://``.

        Args:
            url: ``memory://`` (nothing else is read from it).
            site: The site's name.
            **options: Passed to the constructor (``clock``).

        Returns:
            The backend.
        """
        return cls(site, **options)

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[MemoryWriteBatch]:
        """See :meth:`ccat_buffering.protocols.Backend.atomic`."""
        batch = MemoryWriteBatch(self._state)
        yield batch
        # Applied without an await in between: no coroutine sees a part of it.
        for op in batch.ops:
            op()

    async def find_payload(self, transaction_id: str) -> str | None:
        """See :meth:`ccat_buffering.protocols.SupportsInspection.find_payload`."""
        state = self._state
        payloads = [p for _, p in state.queue] + [e.payload for e in state.in_flight.values()]
        payloads += [letter.payload for letter in state.letters.values()]
        needle = f'"transaction_id":"{transaction_id}"'
        return next((p for p in payloads if needle in p), None)

    async def transaction_keys(
        self, transaction_id: str, records: Sequence[tuple[str, str]]
    ) -> list[KeyInfo]:
        """See :meth:`ccat_buffering.protocols.SupportsInspection.transaction_keys`.

        The memory backend has no keys; it names its entries as Redis would.
        """
        state = self._state
        now = state.clock()
        found = []
        entry = state.statuses.get(transaction_id)
        if state.live_status(transaction_id) is not None and entry is not None:
            ttl = None if entry.expires_at is None else entry.expires_at - now
            found.append(KeyInfo(SUFFIXES["status"] + transaction_id, "status", ttl))
        for model, record_id in records:
            record = state.live_record((model, record_id))
            if record is not None and transaction_id in record.transaction_ids:
                found.append(
                    KeyInfo(
                        f"{SUFFIXES['buffered']}{model}:{record_id}",
                        "record",
                        record.expires_at - now,
                    )
                )
            if state.created_by((model, record_id)) == transaction_id:
                expires = state.id_cache[(model, record_id)][1]
                found.append(KeyInfo(f"{SUFFIXES['ids']}{model}:{record_id}", "id", expires - now))
        return found

    async def append_audit(self, entry: str, keep: int) -> None:
        """See :meth:`ccat_buffering.protocols.SupportsAuditLog.append_audit`."""
        checks.check_audit(entry, keep)
        self._audit.insert(0, entry)
        del self._audit[keep:]

    async def audit_entries(self, limit: int | None = None) -> list[str]:
        """See :meth:`ccat_buffering.protocols.SupportsAuditLog.audit_entries`."""
        return [] if limit is not None and limit <= 0 else self._audit[:limit]

    async def append_sample(self, entry: str, keep: int) -> None:
        """See :meth:`ccat_buffering.protocols.SupportsChartSamples.append_sample`."""
        checks.check_audit(entry, keep)
        self._charts.insert(0, entry)
        del self._charts[keep:]

    async def chart_samples(self, limit: int | None = None) -> list[str]:
        """See :meth:`ccat_buffering.protocols.SupportsChartSamples.chart_samples`."""
        return [] if limit is not None and limit <= 0 else self._charts[:limit]

    async def set_operator_pause(self, note: str | None) -> None:
        """See :meth:`ccat_buffering.protocols.SupportsOperatorPause.set_operator_pause`."""
        checks.check_pause_note(note)
        self._pause = note

    async def operator_pause(self) -> str | None:
        """See :meth:`ccat_buffering.protocols.SupportsOperatorPause.operator_pause`."""
        return self._pause

    async def aclose(self) -> None:
        """Nothing to release: the state lives as long as the object."""

    def __repr__(self) -> str:
        return f"MemoryBackend(site={self.site!r})"
