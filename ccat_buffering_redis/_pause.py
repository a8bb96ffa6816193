"""The operator's pause of a site's drain in Redis: one string, ``site:{<site>}:operator_pause``.

``SupportsOperatorPause`` as a part of :class:`~ccat_buffering_redis.backend.RedisBackend`.
The key exists only while the drain is paused (no TTL: a pause lasts until an
operator resumes, across restarts of every process).
"""

from __future__ import annotations

from ccat_buffering.buffer import checks
from ccat_buffering_redis._parts import BackendPart
from ccat_buffering_redis._values import as_text

__all__ = ["RedisOperatorPause"]


class RedisOperatorPause(BackendPart):
    """The pause methods of :class:`~ccat_buffering_redis.backend.RedisBackend`."""

    async def set_operator_pause(self, note: str | None) -> None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsOperatorPause.set_operator_pause`."""
        checks.check_pause_note(note)
        with self.translate():
            if note is None:
                await self.client.delete(self.keys.pause)
            else:
                await self.client.set(self.keys.pause, note)

    async def operator_pause(self) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsOperatorPause.operator_pause`."""
        with self.translate():
            value = await self.client.get(self.keys.pause)
        return None if value is None else as_text(value)
