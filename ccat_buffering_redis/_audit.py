"""The audit log of a site in Redis: a capped list under ``site:{<site>}:audit``.

The console's chart samples are kept the same way, under ``site:{<site>}:charts``.

``SupportsAuditLog`` as a part of :class:`~ccat_buffering_redis.backend.RedisBackend`.
The newest entry is at the head (``LPUSH``), ``LTRIM`` caps it, and both go in
one ``MULTI``/``EXEC`` (one key: one slot, so a Cluster takes it too).
"""

from __future__ import annotations

from ccat_buffering import checks
from ccat_buffering_redis._parts import BackendPart
from ccat_buffering_redis._values import as_text

__all__ = ["RedisAuditLog"]


class RedisAuditLog(BackendPart):
    """The audit methods of :class:`~ccat_buffering_redis.backend.RedisBackend`."""

    async def append_audit(self, entry: str, keep: int) -> None:
        """See :meth:`ccat_buffering.protocols.SupportsAuditLog.append_audit`."""
        checks.check_audit(entry, keep)
        with self.translate():
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.lpush(self.keys.audit, entry)
                pipe.ltrim(self.keys.audit, 0, keep - 1)
                await pipe.execute()

    async def audit_entries(self, limit: int | None = None) -> list[str]:
        """See :meth:`ccat_buffering.protocols.SupportsAuditLog.audit_entries`."""
        if limit is not None and limit <= 0:
            return []
        with self.translate():
            texts = await self.client.lrange(self.keys.audit, 0, -1 if limit is None else limit - 1)
        return [as_text(text) for text in texts]

    async def append_sample(self, entry: str, keep: int) -> None:
        """See :meth:`ccat_buffering.protocols.SupportsChartSamples.append_sample`."""
        checks.check_audit(entry, keep)
        with self.translate():
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.lpush(self.keys.charts, entry)
                pipe.ltrim(self.keys.charts, 0, keep - 1)
                await pipe.execute()

    async def chart_samples(self, limit: int | None = None) -> list[str]:
        """See :meth:`ccat_buffering.protocols.SupportsChartSamples.chart_samples`."""
        if limit is not None and limit <= 0:
            return []
        with self.translate():
            texts = await self.client.lrange(
                self.keys.charts, 0, -1 if limit is None else limit - 1
            )
        return [as_text(text) for text in texts]
