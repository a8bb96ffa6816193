"""The Redis backend: every store of one site in Redis, each change one atomic call.

Writes go through Lua scripts (``lua/*.lua``, loaded by :mod:`ccat_buffering_redis.scripts`):
a ``Backend.atomic()`` group is one call whatever it holds (``FCALL`` of the
``APPLY`` library, or ``EVALSHA`` where functions are not available: see
:mod:`ccat_buffering_redis._functions`), and groups
that concurrent callers close at the same moment are coalesced into one call
(each still applies whole; see :mod:`ccat_buffering_redis._writes`). Every key
lives under ``site:{<site>}:``, one Redis Cluster slot per site. Redis errors
are translated at this boundary: nothing from ``redis.*`` leaks out.

The stores are in :mod:`ccat_buffering_redis.stores`; the write path,
inspection and health are parts of :class:`RedisBackend` from
:mod:`ccat_buffering_redis._writes`, :mod:`ccat_buffering_redis.inspection` and
:mod:`ccat_buffering_redis._health`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from ccat_buffering._closing import AsyncClosing
from ccat_buffering.buffer._sightings import BufferOrigin
from ccat_buffering.errors import (
    BackendError,
    BackendFullError,
    BackendUnavailableError,
    ConfigurationError,
)
from ccat_buffering_redis import scripts
from ccat_buffering_redis._audit import RedisAuditLog
from ccat_buffering_redis._coalescer import Coalescer
from ccat_buffering_redis._connect import open_client, take_compression, take_parameter
from ccat_buffering_redis._functions import FunctionCall
from ccat_buffering_redis._health import RedisHealth
from ccat_buffering_redis._pause import RedisOperatorPause
from ccat_buffering_redis._refusals import auth_failure, refusal
from ccat_buffering_redis._replicas import (
    acknowledged_offset,
    check_replicas,
    on_one_connection,
    replicas_from_url,
)
from ccat_buffering_redis._values import as_text
from ccat_buffering_redis._writes import RedisWrites
from ccat_buffering_redis.compression import check_compression
from ccat_buffering_redis.dead_letters import RedisDeadLetterStore
from ccat_buffering_redis.inspection import RedisInspection
from ccat_buffering_redis.keys import SiteKeys
from ccat_buffering_redis.stores import (
    RedisBufferStore,
    RedisCacheStore,
    RedisProcessorLease,
    RedisStatusStore,
)
from ccat_buffering_redis.stores import RedisWriteBatch as RedisWriteBatch  # its old path

__all__ = ["RedisBackend"]

Client = Redis | RedisCluster


_SCRIPTS = scripts.SCRIPTS
# By SHA1, as the server names a script in an error, to name a refused line's command.
# Functions are named by their own name.
_SOURCES = {hashlib.sha1(lua.encode()).hexdigest(): lua for lua in _SCRIPTS.values()}
_SOURCES |= {library.function: library.code for library in scripts.LIBRARIES.values()}


class RedisBackend(
    RedisWrites, RedisInspection, RedisHealth, RedisAuditLog, RedisOperatorPause, AsyncClosing
):
    """Every store of one site, in Redis.

    Args:
        client: A redis-py asyncio client (``Redis`` or ``RedisCluster``); the
            backend does not close it.
        site: The site's name (a plain identifier).
        coalesce: Send atomic groups that close together in one call.
        compression: ``"zlib"`` to store queue entries compressed (see
            :mod:`ccat_buffering_redis.compression`); ``None`` for plain text.
        where: How to name the server in error messages (password masked).
        allow_eviction: Buffer even on a Redis whose ``maxmemory-policy``
            evicts keys. Eviction loses acknowledged transactions without a
            word: without this, buffering there raises ``ConfigurationError``.
        indexed_fields: Fields to index for ``CacheStore.find()`` from the
            first write of their model on, by model name. Any other field is
            indexed by the first ``find()`` on it (see
            :mod:`ccat_buffering_redis._field_index`); naming it here only
            spares that first call the scan.
        min_replicas: Acknowledge a write that buffers only once this many
            replicas hold it (``WAIT``, in the same round trip as the write;
            see :mod:`ccat_buffering_redis._replicas`). ``0``: once the
            master holds it.
        min_replicas_timeout: Seconds to wait for those replicas; then the
            caller gets :class:`~ccat_buffering.errors.WriteNotReplicatedError`.

    Raises:
        ConfigurationError: ``compression`` names no known compression, or
            ``min_replicas``/``min_replicas_timeout`` are out of range.
    """

    def __init__(
        self,
        client: Client,
        *,
        site: str,
        coalesce: bool = True,
        compression: str | None = None,
        where: str | None = None,
        allow_eviction: bool = False,
        indexed_fields: Mapping[str, Iterable[str]] | None = None,
        min_replicas: int = 0,
        min_replicas_timeout: float = 1.0,
    ) -> None:
        self.keys = SiteKeys(site)
        self.min_replicas, self.min_replicas_timeout = check_replicas(
            min_replicas, min_replicas_timeout
        )
        self._unlearned = {m: tuple(f) for m, f in (indexed_fields or {}).items() if f}
        self.allow_eviction = allow_eviction
        self._policy_checked_at = -math.inf
        self._eviction_problem: str | None = None
        self.policy_warning: str | None = None
        """Why the eviction policy is not known to be safe, if it is not."""
        self.refused_full_at: float | None = None
        """When (monotonic) a write was last refused as out of memory."""
        self.compression = check_compression(compression)
        if compression is not None and client.get_encoder().decode_responses:
            raise ConfigurationError(
                "compression needs a client that returns bytes: open it without "
                "decode_responses=True"
            )
        self.site = site
        self.client = client
        self.where = where or self._describe(client)
        self._owns_client = False
        self._scripts = {name: client.register_script(lua) for name, lua in _SCRIPTS.items()}
        self._functions = {
            name: FunctionCall(client, self._scripts[name], library)
            for name, library in scripts.LIBRARIES.items()
        }
        self._apply_keys = [self.keys.buffer]
        self._coalescer = Coalescer(self._apply_groups) if coalesce else None
        self.buffer = RedisBufferStore(self)
        self.dead_letters = RedisDeadLetterStore(self)
        self.status = RedisStatusStore(self)
        self.cache = RedisCacheStore(self)
        self.lease = RedisProcessorLease(self)

    @staticmethod
    def _describe(client: Client) -> str:
        if isinstance(client, RedisCluster):
            return "a Redis Cluster"
        kwargs = client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"redis at {kwargs['path']}"
        return f"redis at {kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        site: str,
        coalesce: bool = True,
        compression: str | None = None,
        allow_eviction: bool = False,
        indexed_fields: Mapping[str, Iterable[str]] | None = None,
        min_replicas: int = 0,
        min_replicas_timeout: float = 1.0,
        **options: Any,
    ) -> RedisBackend:
        """Open a backend that owns its client, for a Redis URL.

        Args:
            url: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``
                or ``redis+cluster://``.
                A query parameter ``compression=zlib`` turns on compression
                (it is not passed on to redis-py).
            site: The site's name.
            coalesce: Send atomic groups that close together in one call.
            compression: As in the constructor; the URL's parameter, if it has
                one, wins.
            allow_eviction: As in the constructor; a URL parameter
                ``allow_eviction=true`` turns it on too.
            indexed_fields: As in the constructor.
            min_replicas: As in the constructor; a URL parameter
                ``min_replicas=<n>`` wins.
            min_replicas_timeout: As in the constructor; a URL parameter
                ``min_replicas_timeout=<seconds>`` wins.
            **options: Passed to the redis-py client. Connect and socket
                timeouts are on by default (see :func:`~ccat_buffering_redis._connect.open_client`).

        Returns:
            The backend; ``aclose()`` closes the client.

        Raises:
            ConfigurationError: The URL is not understood, or names an unknown
                compression.
        """
        SiteKeys(site)
        url, in_url = take_compression(url)
        compression = check_compression(in_url or compression)
        url, evict = take_parameter(url, "allow_eviction")
        if evict is not None:
            if evict.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigurationError(
                    f"allow_eviction={evict!r} in the backend URL: use true or false"
                )
            allow_eviction = allow_eviction or evict.lower() in ("true", "1", "yes")
        url, replicas = take_parameter(url, "min_replicas")
        url, replicas_timeout = take_parameter(url, "min_replicas_timeout")
        min_replicas, min_replicas_timeout = replicas_from_url(
            replicas, replicas_timeout, min_replicas, min_replicas_timeout
        )
        client, where = open_client(url, **options)
        backend = cls(
            client,
            site=site,
            coalesce=coalesce,
            compression=compression,
            where=where,
            allow_eviction=allow_eviction,
            indexed_fields=indexed_fields,
            min_replicas=min_replicas,
            min_replicas_timeout=min_replicas_timeout,
        )
        backend._owns_client = True
        return backend

    def translate(self) -> _Translation:
        """Turn redis-py's errors into the library's, naming the server (a ``with`` block)."""
        return _Translation(self)

    def translated(self, exc: BaseException) -> BaseException | None:
        """The library's error for redis-py's (or the OS's) ``exc``; ``None`` for any other."""
        if isinstance(exc, redis.exceptions.TimeoutError | TimeoutError):
            return BackendUnavailableError(
                f"{self.where} did not answer in time ({exc or 'timed out'})"
            )
        if isinstance(exc, redis.exceptions.AuthenticationError):  # a ConnectionError to redis-py
            return BackendError(auth_failure(self.where, str(exc)))
        if isinstance(
            exc,
            redis.exceptions.ConnectionError
            | redis.exceptions.ClusterDownError
            | redis.exceptions.RedisClusterException
            | OSError,
        ):
            if "AuthenticationError" in str(exc):  # the sentinels refused the credentials
                return BackendError(auth_failure(f"{self.where} (its sentinels)", str(exc)))
            return BackendUnavailableError(f"{self.where} cannot be reached: {exc}")
        if isinstance(exc, redis.exceptions.RedisError):
            if isinstance(exc, redis.exceptions.OutOfMemoryError) or str(exc).startswith("OOM"):
                self.refused_full_at = time.monotonic()
                return BackendFullError(self._full_message(str(exc)))
            refused = refusal(str(exc), _SOURCES)
            if refused is not None:
                return BackendError(
                    f"{self.where} refused {refused} to this user (Redis ACL): grant it as the "
                    f"Redis page of the docs lists for each role ({exc})"
                )
            if str(exc).startswith("WRONGPASS"):
                return BackendError(auth_failure(self.where, str(exc)))
            return BackendError(f"{self.where} refused the operation: {exc}")
        return None

    async def script(self, name: str, *args: Any) -> Any:
        """Run one of the backend's scripts for this site.

        Args:
            name: The script's name.
            *args: Its arguments after the key prefix.

        Returns:
            The script's reply.
        """
        with self.translate():
            if name in self._functions:
                return await self._functions[name]([self.keys.buffer], [self.keys.prefix, *args])
            return await self._scripts[name](
                keys=[self.keys.buffer], args=[self.keys.prefix, *args]
            )

    async def buffer_mark(self) -> tuple[str | None, int]:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsBufferMarker.buffer_mark`."""
        with self.translate():
            epoch, seq = await self.client.mget([self.keys.epoch, self.keys.seq])
        return (None if epoch is None else as_text(epoch)), int(seq or 0)

    async def follow_master(self) -> None:
        """Through Sentinel: ask where the master is now; drop idle connections to an old one.

        redis-py asks the sentinels only when it opens a connection, and a
        master replaced by a failover keeps taking writes until Sentinel
        reconfigures it (two masters for a while). Asked before the first
        write that buffers each :data:`~ccat_buffering_redis._memory.POLICY_RECHECK_SECONDS`,
        and at every look of the buffer watch, so writers follow the new
        master within that bound. Other clients: nothing to do.
        """
        pool = getattr(self.client, "connection_pool", None)
        if isinstance(pool, SentinelConnectionPool):
            with self.translate():
                await pool.get_master_address()  # type: ignore[no-untyped-call]

    async def buffer_origin(self) -> BufferOrigin:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsBufferOrigin.buffer_origin`."""
        await self.follow_master()
        with self.translate():
            (epoch, seq), info = await on_one_connection(
                self.client,
                self.keys.buffer,
                [("MGET", self.keys.epoch, self.keys.seq), ("INFO", "replication")],
            )
        if info.get("role", "master") != "master":
            if isinstance(self.client, Redis):
                # A master demoted under a pooled connection: connect afresh
                # (through Sentinel, to the new master) at the next call.
                await self.client.connection_pool.disconnect(inuse_connections=False)
            raise BackendUnavailableError(f"{self.where} answered as a {info.get('role')}")
        previous = _replication_id(info.get("master_replid2"))
        return BufferOrigin(
            None if epoch is None else as_text(epoch),
            int(seq or 0),
            history=_replication_id(info.get("master_replid")) or None,
            offset=acknowledged_offset(info, self.min_replicas),
            previous_history=previous if previous.strip("0") else None,
            fork_offset=int(info.get("second_repl_offset", -1)),
            replicated=self.min_replicas > 0,
            own_offset=int(info.get("master_repl_offset", 0)),
        )

    async def stamp_buffer(self, epoch: str, *, replace: bool = False) -> bool:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsBufferMarker.stamp_buffer`."""
        return bool(await self.script("stamp_buffer", epoch, "1" if replace else "0"))

    async def aclose(self) -> None:
        """Close the client if the backend opened it."""
        if self._owns_client:
            self._owns_client = False
            with self.translate():
                await self.client.aclose()

    def __repr__(self) -> str:
        return f"RedisBackend(site={self.site!r}, {self.where})"


class _Translation:
    """What ``RedisBackend.translate()`` returns.

    A class, not ``@contextmanager``: the write path opens one per call, and
    a generator's frames cost more than the rest of the block's own work.
    """

    __slots__ = ("_backend",)

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        mine = self._backend.translated(exc)
        if mine is not None:
            raise mine from exc


def _replication_id(value: Any) -> str:
    # redis-py reads an id of decimal digits only (the none id is 40 zeros) as a number.
    return f"{value:040d}" if isinstance(value, int) else as_text(value or "")
