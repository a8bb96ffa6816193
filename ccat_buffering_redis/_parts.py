"""What the parts of ``RedisBackend`` (inspection, health) use of the facade."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from ccat_buffering_redis.keys import SiteKeys
    from ccat_buffering_redis.stores import RedisBufferStore, RedisStatusStore

__all__ = ["BackendPart"]


class BackendPart:
    """A part of :class:`~ccat_buffering_redis.backend.RedisBackend`: the attributes it uses."""

    if TYPE_CHECKING:
        client: Redis | RedisCluster
        keys: SiteKeys
        where: str
        site: str
        buffer: RedisBufferStore
        status: RedisStatusStore

        def translate(self) -> AbstractContextManager[None]:
            """See :meth:`RedisBackend.translate`."""

        async def script(self, name: str, *args: Any) -> Any:
            """See :meth:`RedisBackend.script`."""
