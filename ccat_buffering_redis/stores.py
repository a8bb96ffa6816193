"""The stores of one site in Redis: buffer, statuses, cache and lease.

The dead letters are :mod:`ccat_buffering_redis.dead_letters`.

Each store is a view of its :class:`~ccat_buffering_redis.backend.RedisBackend`:
writes go through the backend's ``apply`` (one ``APPLY`` call a group, see
:mod:`ccat_buffering_redis._frame`), reads through its scripts. The write
batch, :class:`RedisWriteBatch`, is in :mod:`ccat_buffering_redis._writes`.
"""

from __future__ import annotations

import builtins
import datetime as dt
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from ccat_buffering.buffer import checks
from ccat_buffering.buffer.checks import check_duration, check_status, check_writes
from ccat_buffering.buffer.protocols import (
    BufferStats,
    CachedRecord,
    CacheWrite,
    Claim,
    LeaseInfo,
)
from ccat_buffering.write.models import TransactionState, TransactionStatus

if TYPE_CHECKING:
    from ccat_buffering_redis.backend import RedisBackend
from ccat_buffering_redis._frame import (
    cache_command,
    command,
    dead_command,
    ms,
    release_command,
    retry_command,
    status_command,
)
from ccat_buffering_redis._values import (
    as_text,
    cached_record,
    field_prefix,
    processing_of,
    status_of,
)
from ccat_buffering_redis._writes import RedisWriteBatch
from ccat_buffering_redis.compression import entry_bytes, entry_text
from ccat_buffering_redis.keys import SEQ_STATES

__all__ = [
    "RedisBufferStore",
    "RedisCacheStore",
    "RedisProcessorLease",
    "RedisStatusStore",
    "RedisWriteBatch",
]


_CURSOR = {True: re.compile(r"\d+"), False: re.compile(r"-?\d+(\.\d+)?(e[+-]?\d+)? \S+")}
"""A status page's cursor: a sequence number (bucketed states), or ``<score> <member>``."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICRO = dt.timedelta(microseconds=1)


# The id an entry starts with, as claim.lua reads it (Transaction.to_json writes it first).
_LEADING_ID = re.compile(r'^\{"format_version":[0-9]+,"transaction_id":"([^"]+)"')


_Claimed = tuple[
    Claim, str | None, TransactionStatus | None, Callable[[], TransactionStatus] | None
]
"""A claim, its id, its status and, if the claim moved it, the status before (see below)."""


def _status_of(transaction_id: str, raw: bytes | str) -> TransactionStatus:
    """The status ``raw`` holds (one the claim moved: never only records)."""
    status = status_of(transaction_id, raw)
    if status is None:
        raise ValueError(f"the status of {transaction_id} holds no status: {raw!r}")
    return status


class _SiteStore:
    """A store of one site: a view of the backend that runs its scripts."""

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._keys = backend.keys


class RedisBufferStore(_SiteStore):
    """:class:`~ccat_buffering.buffer.protocols.BufferStore` in Redis."""

    async def push(self, payloads: Sequence[str]) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.push`."""
        payloads = checks.check_push(payloads)
        if payloads:
            compression = self._backend.compression
            await self._backend.apply(
                [command("push", blobs=(entry_bytes(p, compression),)) for p in payloads]
            )

    async def claim(self, count: int, lease_seconds: float) -> list[Claim]:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.claim`."""
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        check_duration(lease_seconds, "lease_seconds")
        return [claim for claim, _, _, _ in await self.claim_with_statuses(count, lease_seconds)]

    async def claim_with_statuses(
        self, count: int, lease_seconds: float, processing_at: dt.datetime | None = None
    ) -> list[_Claimed]:
        """:meth:`claim`, each claim with the status of the transaction its entry names first.

        The drain writes the claimed transactions' statuses next: they come
        in the claim's own reply, not in a second round trip; and with
        ``processing_at``, the routine ones (``lua/claim.lua`` says which)
        are written ``processing`` by the claim itself, as the drain would
        write them at that time.

        Returns:
            Each claim, the transaction id its entry starts with, that
            transaction's status (``None`` if it has none) and, where the
            claim wrote it ``processing``, the status before (read when
            called); the id is ``None`` where it was not read (a compressed
            entry): ask the status store.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        check_duration(lease_seconds, "lease_seconds")
        args: tuple[int | str, ...] = (count, ms(lease_seconds))
        if processing_at is not None:
            args += (str((processing_at - _EPOCH) // _MICRO),)
        reply = await self._backend.script("claim", *args)
        if not reply:
            return []
        deadline = int(reply[0]) / 1000
        moved = as_text(reply[1])
        out: list[_Claimed] = []
        for k, i in enumerate(range(2, len(reply), 3)):
            claim = Claim(as_text(reply[i]), entry_text(reply[i + 1]), deadline)
            raw = reply[i + 2]
            found = None if isinstance(raw, int) else _LEADING_ID.match(claim.payload[:200])
            if found is None:
                out.append((claim, None, None, None))
                continue
            transaction_id = found.group(1)
            if processing_at is not None and moved[k] == "1":
                moved_to = processing_of(transaction_id, raw, processing_at)
                out.append(
                    (claim, transaction_id, moved_to, partial(_status_of, transaction_id, raw))
                )
            else:
                status = None if raw is None else status_of(transaction_id, raw)
                out.append((claim, transaction_id, status, None))
        return out

    async def ack(self, receipts: Sequence[str]) -> int:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.ack`."""
        receipts = checks.check_receipts(receipts)
        return await self._backend.apply([command("ack", blobs=(r,)) for r in receipts])

    async def retry_later(self, receipts: Sequence[str], delay_seconds: float) -> int:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.retry_later`."""
        return await self._backend.apply([retry_command(receipts, delay_seconds)])

    async def dead_letter(
        self, receipt: str, reason: str, transaction_id: str | None = None
    ) -> bool:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.dead_letter`."""
        return bool(await self._backend.apply([dead_command(receipt, reason, transaction_id)]))

    async def recover(self, *, include_unexpired: bool = False) -> int:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.recover`."""
        return int(await self._backend.script("recover", "1" if include_unexpired else "0"))

    async def stats(self) -> BufferStats:
        """See :meth:`ccat_buffering.buffer.protocols.BufferStore.stats`."""
        now, depth, in_flight, letters, hold = await self._backend.script("buffer_stats")
        held = (int(now) + int(hold)) / 1000 if int(hold) > 0 else None
        return BufferStats(int(depth), int(in_flight), int(letters), held)


class RedisStatusStore(_SiteStore):
    """:class:`~ccat_buffering.buffer.protocols.StatusStore` in Redis."""

    async def get(self, transaction_id: str) -> TransactionStatus | None:
        """See :meth:`ccat_buffering.buffer.protocols.StatusStore.get`."""
        return (await self.get_many([transaction_id]))[0]

    async def get_many(self, transaction_ids: Sequence[str]) -> list[TransactionStatus | None]:
        """See :meth:`ccat_buffering.buffer.protocols.StatusStore.get_many`."""
        if not transaction_ids:
            return []
        with self._backend.translate():
            raw = await self._backend.client.mget([self._keys.status(t) for t in transaction_ids])
        return [
            None if r is None else status_of(t, r)
            for t, r in zip(transaction_ids, raw, strict=True)
        ]

    async def put(self, status: TransactionStatus, ttl_seconds: float) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.StatusStore.put`."""
        check_status(status)
        check_duration(ttl_seconds, "ttl_seconds")
        await self._backend.apply([status_command(status, ttl_seconds)])

    async def ids(self, state: TransactionState, limit: int | None = None) -> list[str]:
        """See :meth:`ccat_buffering.buffer.protocols.StatusStore.ids`."""
        if limit == 0:
            return []
        reply = await self._backend.script("status_ids", str(TransactionState(state)), limit or -1)
        return [as_text(r) for r in reply]

    async def ids_after(
        self, state: TransactionState, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsStatusPaging.ids_after`."""
        state = TransactionState(state)
        if after is not None and not _CURSOR[str(state) in SEQ_STATES].fullmatch(after):
            raise ValueError(f"{after!r} is not a cursor this store gave for {state} ids")
        if limit <= 0:
            return [], None
        reply = await self._backend.script("status_page", str(state), after or "", limit)
        following = as_text(reply[0])
        return [as_text(r) for r in reply[1:]], following or None

    async def counts(self) -> dict[TransactionState, int]:
        """See :meth:`ccat_buffering.buffer.protocols.StatusStore.counts`."""
        states = list(TransactionState)
        reply = await self._backend.script("status_counts", *(str(s) for s in states))
        return {state: int(n) for state, n in zip(states, reply, strict=True)}

    # -- SupportsIdempotencyKeys: single-key commands, atomic in Redis itself --

    async def claim_key(self, digest: str, record: str, ttl_seconds: float) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsIdempotencyKeys.claim_key`."""
        check_duration(ttl_seconds, "ttl_seconds")
        ms = max(int(ttl_seconds * 1000), 1)
        with self._backend.translate():
            # SET ... NX GET (Redis 7): stores unless present, and answers what was there.
            old = await self._backend.client.set(
                self._keys.idempotency(digest), record, nx=True, get=True, px=ms
            )
        return as_text(old) if isinstance(old, (bytes, str)) else None

    async def get_key(self, digest: str) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsIdempotencyKeys.get_key`."""
        with self._backend.translate():
            raw = await self._backend.client.get(self._keys.idempotency(digest))
        return None if raw is None else as_text(raw)

    async def put_key(self, digest: str, record: str, ttl_seconds: float) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsIdempotencyKeys.put_key`."""
        check_duration(ttl_seconds, "ttl_seconds")
        ms = max(int(ttl_seconds * 1000), 1)
        with self._backend.translate():
            await self._backend.client.set(self._keys.idempotency(digest), record, px=ms)

    async def drop_key(self, digest: str) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsIdempotencyKeys.drop_key`."""
        with self._backend.translate():
            await self._backend.client.delete(self._keys.idempotency(digest))


class RedisCacheStore(_SiteStore):
    """:class:`~ccat_buffering.buffer.protocols.CacheStore` in Redis."""

    async def write(
        self, transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float
    ) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.write`."""
        check_writes(transaction_id, writes)
        check_duration(ttl_seconds, "ttl_seconds")
        await self._backend.apply([cache_command(transaction_id, writes, ttl_seconds)])

    async def get(self, model: str, record_id: str) -> CachedRecord | None:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.get`."""
        now, ttl, raw = await self._backend.script("cache_get", model, record_id)
        if not raw:
            return None
        return cached_record(model, record_id, raw, int(ttl), int(now) / 1000)

    async def list(self, model: str) -> list[CachedRecord]:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.list`."""
        now_ms, rows = await self._backend.script("cache_list", model)
        now = int(now_ms) / 1000
        return [cached_record(model, as_text(rid), raw, int(ttl), now) for rid, ttl, raw in rows]

    async def get_many(
        self, model: str, record_ids: Sequence[str]
    ) -> builtins.list[CachedRecord | None]:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.get_many`."""
        if not record_ids:
            return []
        now_ms, rows = await self._backend.script("cache_get_many", model, *record_ids)
        now = int(now_ms) / 1000
        return [
            cached_record(model, rid, raw, int(ttl), now) if raw else None
            for rid, (ttl, raw) in zip(record_ids, rows, strict=True)
        ]

    async def find(self, model: str, equals: Mapping[str, Any]) -> builtins.list[CachedRecord]:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.find`."""
        if not equals:
            return []
        pairs = [(name, field_prefix(name, value)) for name, value in equals.items()]
        now_ms, rows = await self._backend.script("cache_find", model, *itertools.chain(*pairs))
        now = int(now_ms) / 1000
        records = [cached_record(model, as_text(rid), raw, int(ttl), now) for rid, ttl, raw in rows]
        # Long values share an entry with those of the same start and length,
        # and a record that expired and was written again may have kept one.
        return [
            r
            for r in records
            if any(name in r.fields and r.fields[name] == value for name, value in equals.items())
        ]

    async def created_by(self, model: str, record_id: str) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.created_by`."""
        return await self._backend.creator(model, record_id)

    async def extend(self, transaction_ids: Sequence[str], ttl_seconds: float) -> int:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.extend`."""
        transaction_ids = checks.check_cache_extend(transaction_ids, ttl_seconds)
        if not transaction_ids:
            return 0
        return int(await self._backend.script("cache_extend", ms(ttl_seconds), *transaction_ids))

    async def release(self, transaction_ids: Sequence[str]) -> int:
        """See :meth:`ccat_buffering.buffer.protocols.CacheStore.release`."""
        transaction_ids = checks.check_cache_release(transaction_ids)
        if not transaction_ids:
            return 0
        return await self._backend.apply([release_command(transaction_ids)])


class RedisProcessorLease(_SiteStore):
    """:class:`~ccat_buffering.buffer.protocols.ProcessorLease` in Redis (``SET PX``, a token)."""

    async def acquire(self, holder: str, ttl_seconds: float) -> bool:
        """See :meth:`ccat_buffering.buffer.protocols.ProcessorLease.acquire`."""
        checks.check_lease(holder, ttl_seconds)
        return bool(await self._backend.script("lease_acquire", holder, ms(ttl_seconds)))

    async def renew(self, holder: str, ttl_seconds: float) -> bool:
        """See :meth:`ccat_buffering.buffer.protocols.ProcessorLease.renew`."""
        checks.check_lease(holder, ttl_seconds)
        return bool(await self._backend.script("lease_renew", holder, ms(ttl_seconds)))

    async def release(self, holder: str) -> bool:
        """See :meth:`ccat_buffering.buffer.protocols.ProcessorLease.release`."""
        checks.check_lease_holder(holder)
        return bool(await self._backend.script("lease_release", holder))

    async def current(self) -> LeaseInfo | None:
        """See :meth:`ccat_buffering.buffer.protocols.ProcessorLease.current`."""
        now, holder, ttl = await self._backend.script("lease_current")
        if not holder or int(ttl) < 0:
            return None
        return LeaseInfo(as_text(holder), (int(now) + int(ttl)) / 1000)

    async def publish_report(self, report: str, ttl_seconds: float) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsProcessorReports.publish_report`."""
        checks.check_report(report, ttl_seconds)
        await self._backend.script("publish_report", report, ms(ttl_seconds))

    async def processor_report(self) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsProcessorReports.processor_report`."""
        with self._backend.translate():
            value = await self._backend.client.get(self._keys.processor)
        return None if value is None else as_text(value)
