"""Inspection and key audit of a site in Redis: the operator's capabilities.

``SupportsInspection`` (where a transaction's payload and keys are) and
``SupportsKeyAudit`` (keys that would never expire), as a part of
:class:`~ccat_buffering_redis.backend.RedisBackend`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ccat_buffering.buffer.protocols import AuditProgress, KeyInfo
from ccat_buffering_redis._parts import BackendPart
from ccat_buffering_redis._values import as_text, record_creator, record_transactions
from ccat_buffering_redis.compression import entry_text
from ccat_buffering_redis.keys import SUFFIXES

__all__ = ["AUDIT_CHUNK", "RedisInspection"]

AUDIT_CHUNK = 2000
"""Keys per ``SCAN`` of the audit, and per look at their TTLs."""

_ENDLESS = """
local endless = {}
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) == -1 then endless[#endless + 1] = key end
end
return endless
"""
"""The keys of ``KEYS`` without a TTL (each of the site's slot: one call in a Cluster too)."""


class RedisInspection(BackendPart):
    """The inspection and audit methods of :class:`~ccat_buffering_redis.backend.RedisBackend`."""

    async def _describe_keys(self, keys: Sequence[str]) -> list[KeyInfo]:
        infos = []
        with self.translate():
            for start in range(0, len(keys), AUDIT_CHUNK):
                chunk = keys[start : start + AUDIT_CHUNK]
                async with self.client.pipeline(transaction=False) as pipe:
                    for key in chunk:
                        pipe.pttl(key)
                        pipe.type(key)
                    replies = await pipe.execute()
                for key, ttl, kind in zip(chunk, replies[::2], replies[1::2], strict=True):
                    if ttl == -2:
                        continue  # gone, or expired meanwhile
                    infos.append(KeyInfo(key, as_text(kind), None if ttl < 0 else ttl / 1000))
        return infos

    async def find_payload(self, transaction_id: str) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsInspection.find_payload`."""
        needle = f'"transaction_id":"{transaction_id}"'
        keys = self.keys
        with self.translate():
            letter = await self.client.hget(keys.letters, transaction_id)
            if letter is not None:
                return entry_text(letter)
            for raw in await self.client.hvals(keys.inflight):
                if needle in (text := entry_text(raw)):
                    return text
            length = await self.client.llen(keys.buffer)
            for start in range(0, length, 1000):
                for raw in await self.client.lrange(keys.buffer, start, start + 999):
                    if needle in (text := entry_text(raw)):
                        return text
        return None

    async def creator(self, model: str, record_id: str) -> str | None:
        """The transaction that creates a record, from its record and ID-cache entry.

        See :func:`~ccat_buffering_redis._values.record_creator`; one MGET reads both.
        """
        with self.translate():
            entry, record = await self.client.mget(
                self.keys.ids(model, record_id), self.keys.buffered(model, record_id)
            )
        return record_creator(entry, record)

    async def transaction_keys(
        self, transaction_id: str, records: Sequence[tuple[str, str]]
    ) -> list[KeyInfo]:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsInspection.transaction_keys`."""
        keys = [self.keys.status(transaction_id)]
        with self.translate():
            for model, record_id in records:
                buffered = self.keys.buffered(model, record_id)
                value = await self.client.get(buffered)
                if transaction_id in record_transactions(value):
                    keys.append(buffered)
                ids = self.keys.ids(model, record_id)
                entry = await self.client.get(ids)
                if entry is not None and record_creator(entry, value) == transaction_id:
                    keys.append(ids)
        return await self._describe_keys(keys)

    async def audit_keys(self, progress: AuditProgress | None = None) -> list[KeyInfo]:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsKeyAudit.audit_keys`.

        One ``SCAN`` of :data:`AUDIT_CHUNK` keys, then one script that keeps
        those without a TTL (``PTTL`` in Redis: parsing a reply per key cost
        more than the round trips) and one ``MGET`` of the statuses among
        them: three round trips per chunk, not two per key (300k buffered
        transactions took 208-252 s one key at a time).
        """
        bounded = self.keys.bounded()
        buckets = self.keys.prefix + SUFFIXES["state"]  # the state buckets: bounded too
        leaks: list[str] = []
        with self.translate():
            total = int(await self.client.dbsize()) if progress is not None else 0
            visited = 0
            chunk: list[str] = []
            # scan_iter, not SCAN with a cursor: a Cluster client's cursor is one per node.
            async for raw in self.client.scan_iter(match=self.keys.pattern(), count=AUDIT_CHUNK):
                visited += 1
                key = as_text(raw)
                # is_bounded only where it can be true: it costs more than the rest.
                if key in bounded or (key.startswith(buckets) and self.keys.is_bounded(key)):
                    continue
                chunk.append(key)
                if len(chunk) >= AUDIT_CHUNK:
                    leaks += await self._without_ttl(chunk)
                    chunk = []
                    if progress is not None:
                        progress(min(visited, total), total)
            leaks += await self._without_ttl(chunk)
            if progress is not None:
                progress(total, total)
        return await self._describe_keys(leaks)

    async def _without_ttl(self, keys: list[str]) -> list[str]:
        """The keys of one chunk that have no TTL and should have one."""
        if not keys:
            return []
        endless = [as_text(k) for k in await self.client.eval(_ENDLESS, len(keys), *keys)]
        # A status has no TTL while its transaction is unfinished: read those in one MGET.
        ids = {k: t for k in endless if (t := self.keys.status_id(k)) is not None}
        unfinished = await self._unfinished(ids)
        return [k for k in endless if k not in unfinished]

    async def _unfinished(self, ids: dict[str, str]) -> set[str]:
        """The status keys of ``ids`` (key: transaction id) whose transaction is unfinished."""
        try:
            statuses = await self.status.get_many(list(ids.values()))
        except ValueError:
            # One unreadable status: read them one by one; the unreadable one is a leak.
            statuses = []
            for transaction_id in ids.values():
                try:
                    statuses.append(await self.status.get(transaction_id))
                except ValueError:
                    statuses.append(None)
        return {
            key
            for key, status in zip(ids, statuses, strict=True)
            if status is not None and not status.state.is_terminal
        }
