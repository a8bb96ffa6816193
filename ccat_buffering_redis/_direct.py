"""One command on a pooled connection, without redis-py's per-call machinery.

``Redis.execute_command`` costs more CPU than the round trip of a small
command itself: it wraps every send in ``asyncio.wait_for`` (a task and two
more turns of the event loop per call when a ``socket_timeout`` is set, as
:func:`~ccat_buffering_redis._connect.open_client` always sets one), runs the
call through its retry loop, and takes the connection from the pool and gives
it back through a lock, an event and four observability records. On the write
path that was the largest part of what a ``buffer()`` costs in Python (see
the write path in docs/benchmarks.rst). A :class:`DirectCall` makes the write
path's one call itself:

* the connection comes from the client's pool and goes back to it (so a
  Sentinel pool finds the master, and closing the client closes it). A
  connection whose call succeeded is kept for the next call for at most
  :data:`KEEP_SECONDS`, then given back: calls that follow each other do not
  go through the pool each time, and an idle connection is in the pool again
  by the next few milliseconds (where a failover's disconnect of idle
  connections reaches it);
* the command is packed with the client's encoding and written to the
  socket; only a write that fills the socket's buffer waits, under the
  connection's ``socket_timeout`` (a hung Redis still times out);
* the reply is read as the connection's ``read_response`` reads it (from
  its parser, for redis-py's own RESP2 connections): under the
  ``socket_timeout``, Redis's errors raised as redis-py raises them, the
  connection closed when a read fails or is cancelled; a connection whose
  call failed goes back to the pool at once, never kept, so a reply still
  due never reaches the next caller;
* it never retries: a lost reply is the caller's to see, as with the
  clients :func:`~ccat_buffering_redis._connect.open_client` opens (a retry
  would run a write script twice without a word).

Clients of other shapes (a Cluster, a client pinned to one connection, a pool
whose connections are not redis-py's ``Connection``) get ``None`` from
:func:`direct_call` and keep ``execute_command``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import redis.exceptions
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.utils import check_protocol_version

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster

__all__ = ["KEEP_SECONDS", "DirectCall", "direct_call", "pack"]

log = logging.getLogger(__name__)

KEEP_SECONDS = 0.005
"""How long, at most, a connection is kept out of the pool between calls."""

_RESOLUTION = time.get_clock_info("monotonic").resolution


def direct_call(client: Redis | RedisCluster) -> DirectCall | None:
    """A :class:`DirectCall` for ``client``, or ``None`` where only ``execute_command`` will do."""
    if not isinstance(client, Redis) or client.single_connection_client:
        return None
    if not issubclass(client.connection_pool.connection_class, Connection):
        return None
    return DirectCall(client)


def pack(args: tuple[str | bytes | int, ...], encoding: str, errors: str) -> bytes:
    """``args`` as one command of the Redis protocol (RESP), texts encoded as given."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is str:
            data = arg.encode(encoding, errors)
        elif type(arg) is int:
            data = b"%d" % arg
        elif isinstance(arg, bytes):
            data = arg
        else:
            raise TypeError(f"a command's argument must be str, bytes or int, not {arg!r}")
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class DirectCall:
    """Sends one command on a connection of ``client``'s pool and returns its reply.

    Args:
        client: A plain (non-Cluster) redis-py asyncio client.
    """

    def __init__(self, client: Redis) -> None:
        self.pool = client.connection_pool
        self._kept: list[AbstractConnection] = []
        self._giving_back: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog = Watchdog()

    async def __call__(self, *args: str | bytes | int) -> Any:
        """Send ``args`` as one command; its reply.

        Raises:
            redis.exceptions.RedisError: As ``execute_command`` raises it
                (``ResponseError`` for an error reply, ``TimeoutError``,
                ``ConnectionError``).
        """
        conn = self._kept.pop() if self._kept else await self.pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            if conn.health_check_interval:
                await conn.check_health()
            encoder = conn.encoder
            packed = pack(args, encoder.encoding, encoder.encoding_errors)
            writer = conn._writer
            if type(writer) is asyncio.StreamWriter:
                # One write, no task: only a write the socket did not take whole waits.
                try:
                    writer.write(packed)
                except OSError as exc:
                    # As ``send_packed_command``: half a command is never followed by another.
                    await conn.disconnect(nowait=True)
                    raise redis.exceptions.ConnectionError(
                        f"Error while writing to socket: {exc}"
                    ) from exc
                if writer.transport.get_write_buffer_size():
                    await _drain(conn, writer)
            else:
                # Closed since (the client closed, a failover: it connects again), or
                # not a socket (fakeredis): as redis-py sends.
                await conn.send_packed_command(packed, check_health=False)
            parser = conn._parser
            if (
                type(parser) is _AsyncHiredisParser
                and type(conn).read_response is Connection.read_response
                and conn.socket_timeout is not None
            ):
                reply = await self._read(conn, parser, conn.socket_timeout)
            else:
                reply = await _read(conn)
        except BaseException:
            await self.pool.release(conn)
            raise
        self._keep(conn)
        return reply

    async def _read(
        self, conn: AbstractConnection, parser: _AsyncHiredisParser, timeout: float
    ) -> Any:
        """The reply, read with the parser's hiredis reader, bounded by the watchdog.

        What ``conn.read_response()`` does (RESP2 or RESP3), without its three
        coroutine layers; the ``socket_timeout`` kept by :class:`Watchdog`
        rather than an ``asyncio.timeout`` (a timer made and cancelled per call).
        """
        task = asyncio.current_task()
        if task is None:  # no task to cancel at the deadline: as before
            return await _read(conn)
        watch = self._watchdog.watch(task, timeout)
        conn._active_read_timeout = watch  # type: ignore[assignment]
        try:
            if not parser._connected:
                raise redis.exceptions.ConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
            reader: Any = parser._reader
            stream: Any = parser._stream
            while True:
                reply = reader.gets()
                while reply is NOT_ENOUGH_DATA:
                    data = await stream.read(parser._read_size)
                    if not data:
                        raise redis.exceptions.ConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
                    reader.feed(data)
                    reply = reader.gets()
                push = parser._hiredis_PushNotificationType
                if push is None or not isinstance(reply, push):
                    break
                # RESP3: a push (an invalidation, a maintenance notice) before
                # the reply goes to its handler, as the parser's read_response does.
                await parser.handle_push_response(reply)
            # As the parser: a ConnectionError in the reply (LOADING, ...) raises, and
            # closes the connection.
            if isinstance(reply, redis.exceptions.ConnectionError):
                raise reply
            if (
                type(reply) is list
                and reply
                and isinstance(reply[0], redis.exceptions.ConnectionError)
            ):
                raise reply[0]
        except BaseException as exc:
            self._watchdog.done(task)
            conn._active_read_timeout = None
            await conn.disconnect(nowait=True)
            if (
                isinstance(exc, asyncio.CancelledError)
                and watch.expired
                and task.uncancel() <= watch.cancelling
            ):
                raise redis.exceptions.TimeoutError("Timeout reading from socket") from None
            if isinstance(exc, OSError):
                raise redis.exceptions.ConnectionError(
                    f"Error while reading from socket: {exc.args}"
                ) from exc
            raise
        # Not expired: the watchdog cancels a task only while it waits for the reply.
        self._watchdog.done(task)
        conn._active_read_timeout = None
        if conn.health_check_interval:
            conn.next_health_check = asyncio.get_running_loop().time() + conn.health_check_interval
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply from None
        return reply

    def _keep(self, conn: AbstractConnection) -> None:
        if conn.should_reconnect():  # type: ignore[no-untyped-call]
            self._give_back([conn])
            return
        self._kept.append(conn)
        if self._giving_back is None:
            self._giving_back = asyncio.get_running_loop().call_later(
                KEEP_SECONDS, self._give_back_kept
            )

    def _give_back_kept(self) -> None:
        self._giving_back = None
        kept, self._kept = self._kept, []
        self._give_back(kept)

    def _give_back(self, connections: list[AbstractConnection]) -> None:
        for conn in connections:
            task = asyncio.get_running_loop().create_task(self._release(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _release(self, conn: AbstractConnection) -> None:
        try:
            await self.pool.release(conn)
        except Exception:  # a pool closed or reset meanwhile: nothing left to give back to
            log.debug("could not give a connection back to its pool", exc_info=True)


class Watchdog:
    """Bounds the reads in flight by one timer, instead of a timer per read.

    ``asyncio.timeout`` makes a timer and cancels it on every read; the
    reads of the write path follow each other without pause, so one timer,
    set for the earliest deadline and set again only when it fires, bounds
    them all. When a read's deadline passes, its task is cancelled, as
    ``asyncio.timeout`` does, and the read raises ``TimeoutError``.
    """

    __slots__ = ("_handle", "_loop", "_reads")

    def __init__(self) -> None:
        self._reads: dict[asyncio.Task[Any], Watch] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, task: asyncio.Task[Any], timeout: float) -> Watch:
        """Watch ``task``'s read for ``timeout`` seconds; :meth:`done` ends it."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Another event loop (a test's, a program's next asyncio.run()):
            # what was watched on the old one is gone with it.
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            self._reads = {}
            self._loop = loop
        watch = Watch(self, task, loop.time() + timeout)
        self._reads[task] = watch
        # Set for an earlier read, the timer fires by this one's deadline too,
        # unless this one's timeout is shorter.
        self.moved(watch.deadline)
        return watch

    def done(self, task: asyncio.Task[Any]) -> None:
        """Stop watching ``task``'s read."""
        self._reads.pop(task, None)

    def moved(self, deadline: float) -> None:
        """A watched read's deadline is (now) ``deadline``: fire by then."""
        if self._loop is None:
            return
        if self._handle is not None:
            if self._handle.when() <= deadline:
                return
            self._handle.cancel()
        self._handle = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._handle = None
        loop = self._loop
        assert loop is not None
        now = loop.time() + _RESOLUTION
        following = math.inf
        for task, watch in self._reads.items():
            if watch.expired:
                continue
            if watch.deadline <= now:
                watch.expired = True
                task.cancel()
            elif watch.deadline < following:
                following = watch.deadline
        if following != math.inf:
            self._handle = loop.call_at(following, self._expire)


class Watch:
    """One read that a :class:`Watchdog` bounds.

    Also what redis-py finds as a connection's active read timeout
    (``_active_read_timeout``): its maintenance notifications move the
    deadline of a read in flight with :meth:`reschedule`, as they move an
    ``asyncio.timeout``'s.
    """

    __slots__ = ("cancelling", "deadline", "expired", "task", "watchdog")

    def __init__(self, watchdog: Watchdog, task: asyncio.Task[Any], deadline: float) -> None:
        self.watchdog = watchdog
        self.task = task
        self.deadline = deadline
        self.cancelling = task.cancelling()
        """The task's cancel requests before the read: more after it are not ours."""
        self.expired = False

    def reschedule(self, when: float | None) -> None:
        """Move the deadline to loop time ``when``; ``None``: no deadline."""
        if self.expired:
            return
        self.deadline = math.inf if when is None else when
        if when is not None:
            self.watchdog.moved(when)


async def _read(conn: AbstractConnection) -> Any:
    """The reply to the command just sent, as ``conn.read_response()`` gives it.

    For redis-py's own connections speaking RESP2, read from the parser
    under the ``socket_timeout``, as ``read_response`` does without its
    per-call bookkeeping; a subclass with its own ``read_response`` (Sentinel's,
    which drops a connection to a demoted master) or RESP3 is left to it. A
    failed, timed-out or cancelled read closes the connection.
    """
    parser = getattr(conn, "_parser", None)
    if (
        type(conn).read_response is not Connection.read_response
        or parser is None
        or check_protocol_version(conn.protocol, 3)
    ):
        return await conn.read_response()
    try:
        async with asyncio.timeout(conn.socket_timeout):
            reply = await parser.read_response()
    except TimeoutError:
        await conn.disconnect(nowait=True)
        raise redis.exceptions.TimeoutError("Timeout reading from socket") from None
    except OSError as exc:
        await conn.disconnect(nowait=True)
        raise redis.exceptions.ConnectionError(
            f"Error while reading from socket: {exc.args}"
        ) from exc
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    if conn.health_check_interval:
        conn.next_health_check = asyncio.get_running_loop().time() + conn.health_check_interval
    if isinstance(reply, redis.exceptions.ResponseError):
        raise reply from None
    return reply


async def _drain(conn: AbstractConnection, writer: asyncio.StreamWriter) -> None:
    """Wait, under the ``socket_timeout``, until the socket took what it did not at once."""
    try:
        async with asyncio.timeout(conn.socket_timeout):
            # drain() waits while over the high-water mark.
            await writer.drain()
    except TimeoutError:
        await conn.disconnect(nowait=True)
        raise redis.exceptions.TimeoutError("Timeout writing to socket") from None
    except OSError as exc:
        await conn.disconnect(nowait=True)
        raise redis.exceptions.ConnectionError(f"Error while writing to socket: {exc}") from exc
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
