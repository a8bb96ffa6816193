"""Timeouts for a link to the main database that hangs instead of failing.

A long-haul link more often drops packets than resets: a statement then waits
for an answer that never comes, and without a limit the processor waits with
it for ever. Three layers bound every call:

* the **driver**: a connect timeout, TCP keepalive and ``TCP_USER_TIMEOUT``
  (the kernel gives up on data that stays unacknowledged);
* the **server**: ``statement_timeout``, ``lock_timeout`` and
  ``idle_in_transaction_session_timeout`` for the processor's own sessions, so
  that a paused or half-dead worker cannot hold row locks for long;
* the **client**: a :class:`Watchdog` that closes the connection's socket when
  a call goes unanswered for the statement timeout. It is the only layer that
  works when the far end still acknowledges TCP but no longer answers (a
  stalled relay, a frozen server), and it needs nothing from the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["LinkTimeouts", "Watchdog", "connect_options", "watch_engine", "watched"]

_INFO_KEY = "ccat_buffering.watchdog"


@dataclass(frozen=True)
class LinkTimeouts:
    """How long each part of a call to the database may take, in seconds.

    Attributes:
        connect: Opening a connection, authentication included.
        statement: A call (a statement, a pipeline's round trip, COMMIT) that
            gets no answer; the connection is then discarded.
        lock: A statement waiting for a row lock (server ``lock_timeout``).
        idle_in_transaction: A session idle inside a transaction is ended by
            the server (its locks are freed).
        keepalive_idle: TCP keepalive: idle time before the first probe.
        keepalive_interval: TCP keepalive: time between probes.
        keepalive_count: TCP keepalive: unanswered probes before the
            connection is dropped.
    """

    connect: float = 10.0
    statement: float = 30.0
    lock: float = 10.0
    idle_in_transaction: float = 30.0
    keepalive_idle: float = 10.0
    keepalive_interval: float = 5.0
    keepalive_count: int = 3

    def server_settings(self) -> dict[str, str]:
        """The session settings the server enforces, in milliseconds."""
        return {
            "statement_timeout": str(_ms(self.statement)),
            "lock_timeout": str(_ms(self.lock)),
            "idle_in_transaction_session_timeout": str(_ms(self.idle_in_transaction)),
        }

    @property
    def user_timeout_ms(self) -> int:
        """``TCP_USER_TIMEOUT``: how long sent data may stay unacknowledged."""
        return _ms(self.keepalive_idle + self.keepalive_interval * self.keepalive_count)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def connect_options(driver: str, timeouts: LinkTimeouts) -> dict[str, Any]:
    """``connect_args`` for ``create_async_engine`` that apply ``timeouts``.

    Args:
        driver: The dialect's driver name (``asyncpg``, ``psycopg``).
        timeouts: The limits.

    Returns:
        Keyword arguments of the driver's connect function; empty for
        drivers without a network link (SQLite).
    """
    server = timeouts.server_settings()
    if driver == "asyncpg":
        # asyncpg has no keepalive parameters: they are set on its socket at connect.
        return {"timeout": timeouts.connect, "server_settings": server}
    if driver in ("psycopg", "psycopg_async"):
        return {
            "connect_timeout": max(1, math.ceil(timeouts.connect)),
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(timeouts.keepalive_idle)),
            "keepalives_interval": max(1, math.ceil(timeouts.keepalive_interval)),
            "keepalives_count": timeouts.keepalive_count,
            "tcp_user_timeout": timeouts.user_timeout_ms,
            "options": " ".join(f"-c {name}={value}" for name, value in server.items()),
        }
    return {}


def _socket_of(driver_connection: Any) -> Any:
    """The socket of an asyncpg or psycopg connection, or ``None``."""
    transport = getattr(driver_connection, "_transport", None)  # asyncpg
    if transport is not None:
        return transport.get_extra_info("socket")
    pgconn = getattr(driver_connection, "pgconn", None)  # psycopg
    if pgconn is not None:
        with contextlib.suppress(Exception):
            return socket.socket(fileno=os.dup(pgconn.socket))
    return None


def _set_keepalive(sock: Any, timeouts: LinkTimeouts) -> None:
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), timeouts.keepalive_idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), timeouts.keepalive_interval),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), timeouts.keepalive_count),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), None),
    ]
    for level, name, value in options:
        if name is None:
            continue  # not on this platform
        number = timeouts.user_timeout_ms if value is None else max(1, math.ceil(value))
        with contextlib.suppress(OSError):
            sock.setsockopt(level, name, number)


def watch_engine(engine: AsyncEngine, timeouts: LinkTimeouts | None = None) -> None:
    """Let :func:`watched` see every call made on ``engine``'s connections.

    Idempotent. With ``timeouts``, also sets TCP keepalive on each new asyncpg
    connection (psycopg takes it as connect parameters).

    Args:
        engine: An async engine.
        timeouts: The limits, for keepalive.
    """
    sync_engine = engine.sync_engine
    if event.contains(sync_engine, "before_cursor_execute", _touch_cursor):
        return
    for name in ("before_cursor_execute", "after_cursor_execute"):
        event.listen(sync_engine, name, _touch_cursor)
    for name in ("begin", "commit", "rollback", "savepoint", "release_savepoint"):
        event.listen(sync_engine, name, _touch)
    if timeouts is not None and engine.dialect.driver == "asyncpg":

        @event.listens_for(sync_engine, "connect")
        def _keepalive(dbapi_connection: Any, _record: Any) -> None:
            sock = _socket_of(getattr(dbapi_connection, "driver_connection", None))
            if sock is not None:
                _set_keepalive(sock, timeouts)


def _touch(conn: Any, *args: Any) -> None:
    if conn.invalidated:
        # An invalidated connection's closing rollback: there is no socket to
        # watch, and its ``info`` raises PendingRollbackError.
        return
    watchdog = conn.info.get(_INFO_KEY)
    if watchdog is not None:
        watchdog.touch()


def _touch_cursor(conn: Any, *args: Any, **kwargs: Any) -> None:
    _touch(conn)


class Watchdog:
    """Closes a connection's socket when a call on it goes unanswered too long.

    Every call pushes the deadline ``timeout`` seconds ahead; a call still
    waiting at the deadline then fails at once with the driver's
    connection-lost error, which the pool treats as a disconnect (the
    connection is discarded, never reused).

    Args:
        driver_connection: The asyncpg or psycopg connection.
        timeout: Seconds a call may go unanswered.
    """

    def __init__(self, driver_connection: Any, timeout: float) -> None:
        self.driver_connection = driver_connection
        self.timeout = timeout
        self.fired = False
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None

    def touch(self) -> None:
        """Push the deadline ``timeout`` seconds ahead (a call begins or answers)."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_later(self.timeout, self._fire)

    def close(self) -> None:
        """Stop watching."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self.fired = True
        self._handle = None
        terminate = getattr(self.driver_connection, "terminate", None)
        if callable(terminate):  # asyncpg: abort the transport, fail the waiting call
            terminate()
            return
        sock = _socket_of(self.driver_connection)
        if sock is not None:
            # psycopg: a read on a shut-down socket ends at once ("server closed
            # the connection"); its own fd stays valid until the pool closes it.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@contextlib.asynccontextmanager
async def watched(conn: AsyncConnection, timeout: float | None) -> AsyncIterator[Watchdog | None]:
    """Watch every call made on ``conn`` within the block.

    Args:
        conn: A connection of an engine passed to :func:`watch_engine`.
        timeout: Seconds a call may go unanswered; ``None`` watches nothing.

    Yields:
        The watchdog (``None`` when not watching or the driver has no socket).
    """
    if timeout is None or conn.dialect.name != "postgresql":
        yield None
        return
    raw = await conn.get_raw_connection()
    watchdog = Watchdog(raw.driver_connection, timeout)
    info = conn.sync_connection.info if conn.sync_connection is not None else {}
    info[_INFO_KEY] = watchdog
    watchdog.touch()
    try:
        yield watchdog
    finally:
        watchdog.close()
        info.pop(_INFO_KEY, None)
