"""Scripts called as Redis Functions (``FCALL``), with ``EVALSHA`` as the fallback.

A script run by ``EVALSHA`` defines all its Lua functions again on every
call; ``APPLY`` holds about 80, and defining them cost more than the Redis
commands of a small write (see :mod:`ccat_buffering_redis.scripts`). Loaded
once as a library (``FUNCTION LOAD``), they are defined once, and each
``FCALL`` only resets the call's state.

The library is loaded lazily, by the first call that finds it missing
(``ERR Function not found``: never loaded, or lost with a restart without
persistence, or a failover to a node that never had it), on every primary of
a Cluster, and the call is retried once. Its name carries a hash of its code,
so that processes of different versions sharing a server never replace each
other's.

Where functions cannot be used, the same Lua runs as the script it was
(``EVALSHA``, loaded as before) and nothing else changes:

* for good, on this client: the server has no ``FCALL`` (Redis before 7.0) or
  its ACL refuses this user ``FCALL`` or ``FUNCTION LOAD`` (see
  :mod:`ccat_buffering_redis.acl`);
* for one call: Redis is out of memory. A function that may write is refused
  whole there, before it runs; the script is run instead, as before, so that
  the writes that free memory (acks, dead letters, releases) still apply
  and those that buffer are refused with their own message.

Calls that go in a pipeline (with ``WAIT``, see :mod:`ccat_buffering_redis._replicas`)
take the script.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import redis.exceptions

from ccat_buffering_redis._direct import direct_call
from ccat_buffering_redis.scripts import Library

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.commands.core import AsyncScript

__all__ = ["FunctionCall"]

log = logging.getLogger(__name__)

_NOT_LOADED = "function not found"
_UNUSABLE = ("unknown command", "'fcall'", "'function|load'", "'function'")


def _unusable(exc: redis.exceptions.ResponseError) -> bool:
    """Whether ``exc`` says this server or user cannot use functions at all."""
    text = str(exc).lower()
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return any(name in text for name in _UNUSABLE[1:])
    return text.startswith(_UNUSABLE[0]) and ("fcall" in text or "function" in text)


class FunctionCall:
    """One script, called as a Redis Function where the server allows it.

    Args:
        client: The backend's client.
        script: The script registered on ``client`` (the fallback).
        library: The script built as a library (see :func:`ccat_buffering_redis.scripts.library`).
    """

    def __init__(self, client: Redis | RedisCluster, script: AsyncScript, library: Library) -> None:
        self.client = client
        self.script = script
        self.library = library
        self.usable = True
        """``False`` once the server or its ACL refused functions: the script runs instead."""
        self._direct = direct_call(client)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        """Run the function (or the script) with ``keys`` and ``args``; its reply.

        Raises:
            redis.exceptions.RedisError: As the call raised it.
        """
        if self.usable:
            try:
                if self._direct is not None:  # _fcall's first branch, one coroutine fewer
                    return await self._direct(
                        "FCALL", self.library.function, len(keys), *keys, *args
                    )
                return await self._fcall(keys, args)
            except redis.exceptions.OutOfMemoryError:
                pass  # refused whole before it ran: the script sorts out what may still apply
            except redis.exceptions.ResponseError as exc:
                if _NOT_LOADED in str(exc).lower():
                    if await self._load():
                        try:
                            return await self._fcall(keys, args)
                        except redis.exceptions.OutOfMemoryError:
                            pass
                elif _unusable(exc):
                    self._give_up(exc)
                else:
                    raise
        return await self.script(keys=keys, args=args)

    async def _fcall(self, keys: list[str], args: list[Any]) -> Any:
        if self._direct is not None:
            # The write path's one call: without redis-py's per-call machinery.
            return await self._direct("FCALL", self.library.function, len(keys), *keys, *args)
        return await self.client.fcall(self.library.function, len(keys), *keys, *args)

    async def _load(self) -> bool:
        """Load the library (every primary of a Cluster); whether the function can be called.

        Callers that found it missing together each load it: loading the same
        code again replaces it with itself.
        """
        try:
            await self.client.execute_command("FUNCTION LOAD", "REPLACE", self.library.code)
        except redis.exceptions.OutOfMemoryError:
            return False
        except redis.exceptions.ResponseError as exc:
            if not _unusable(exc):
                raise
            self._give_up(exc)
            return False
        return True

    def _give_up(self, exc: redis.exceptions.ResponseError) -> None:
        if self.usable:
            self.usable = False
            log.info(
                "Redis functions are not available (%s): %s runs as a script (EVALSHA)",
                exc,
                self.library.function,
            )
