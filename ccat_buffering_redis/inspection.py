"""Inspection and key audit of a site in Redis: the operator's capabilities.

``SupportsInspection`` (where a transaction's payload and keys are) and
``SupportsKeyAudit`` (keys that would never expire), as a part of
:class:`~ccat_buffering_redis.backend.RedisBackend`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ccat_buffering.buffer.protocols import KeyInfo
from ccat_buffering_redis._parts import BackendPart
from ccat_buffering_redis._values import as_text, record_creator, record_transactions
from ccat_buffering_redis.compression import entry_text

__all__ = ["RedisInspection"]


class RedisInspection(BackendPart):
    """The inspection and audit methods of :class:`~ccat_buffering_redis.backend.RedisBackend`."""

    async def _describe_keys(self, keys: Sequence[str]) -> list[KeyInfo]:
        infos = []
        with self.translate():
            for key in keys:
                ttl = await self.client.pttl(key)
                if ttl == -2:
                    continue  # gone, or expired meanwhile
                kind = as_text(await self.client.type(key))
                infos.append(KeyInfo(key, kind, None if ttl < 0 else ttl / 1000))
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

    async def audit_keys(self) -> list[KeyInfo]:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsKeyAudit.audit_keys`."""
        bounded = self.keys.bounded()
        leaks = []
        with self.translate():
            async for raw in self.client.scan_iter(match=self.keys.pattern(), count=1000):
                key = as_text(raw)
                if key in bounded or self.keys.is_bounded(key) or await self.client.pttl(key) != -1:
                    continue
                transaction_id = self.keys.status_id(key)
                if transaction_id is not None:
                    status = await self.status.get(transaction_id)
                    if status is not None and not status.state.is_terminal:
                        continue
                leaks.append(key)
        return await self._describe_keys(leaks)
