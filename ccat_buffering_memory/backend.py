"""The in-memory backend: every store of one site, held in this process.

It is a complete implementation, not a mock: TTLs, FIFO order, leases and
atomic groups behave as the Redis backend's do, against an injectable clock,
and it passes the same contract suite. What it cannot do is outlive its
process, so a site in production uses Redis.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ccat_buffering._closing import AsyncClosing
from ccat_buffering.buffer import checks
from ccat_buffering.buffer.key_schema import SUFFIXES
from ccat_buffering.buffer.protocols import (
    KeyInfo,
)
from ccat_buffering.write.models import check_identifier
from ccat_buffering_memory._state import Clock, SiteState
from ccat_buffering_memory.stores import (
    MemoryBufferStore,
    MemoryCacheStore,
    MemoryDeadLetterStore,
    MemoryProcessorLease,
    MemoryStatusStore,
    MemoryWriteBatch,
)

__all__ = ["MemoryBackend"]


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
        """See :meth:`ccat_buffering.buffer.protocols.Backend.atomic`."""
        batch = MemoryWriteBatch(self._state)
        yield batch
        # Applied without an await in between: no coroutine sees a part of it.
        for op in batch.ops:
            op()

    async def find_payload(self, transaction_id: str) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsInspection.find_payload`."""
        state = self._state
        payloads = [p for _, p in state.queue] + [e.payload for e in state.in_flight.values()]
        payloads += [letter.payload for letter in state.letters.values()]
        needle = f'"transaction_id":"{transaction_id}"'
        return next((p for p in payloads if needle in p), None)

    async def transaction_keys(
        self, transaction_id: str, records: Sequence[tuple[str, str]]
    ) -> list[KeyInfo]:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsInspection.transaction_keys`.

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
        """See :meth:`ccat_buffering.buffer.protocols.SupportsAuditLog.append_audit`."""
        checks.check_audit(entry, keep)
        self._audit.insert(0, entry)
        del self._audit[keep:]

    async def audit_entries(self, limit: int | None = None) -> list[str]:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsAuditLog.audit_entries`."""
        return [] if limit is not None and limit <= 0 else self._audit[:limit]

    async def append_sample(self, entry: str, keep: int) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsChartSamples.append_sample`."""
        checks.check_audit(entry, keep)
        self._charts.insert(0, entry)
        del self._charts[keep:]

    async def chart_samples(self, limit: int | None = None) -> list[str]:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsChartSamples.chart_samples`."""
        return [] if limit is not None and limit <= 0 else self._charts[:limit]

    async def set_operator_pause(self, note: str | None) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsOperatorPause.set_operator_pause`."""
        checks.check_pause_note(note)
        self._pause = note

    async def operator_pause(self) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsOperatorPause.operator_pause`."""
        return self._pause

    async def aclose(self) -> None:
        """Nothing to release: the state lives as long as the object."""

    def __repr__(self) -> str:
        return f"MemoryBackend(site={self.site!r})"
