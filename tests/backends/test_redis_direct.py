"""The write path's call without redis-py's per-call machinery (``_direct``).

What it must keep of ``execute_command``: the reply and Redis's errors as
redis-py gives them, the socket timeout, a connection that is never handed on
with a reply still due, and every connection back in its pool soon after.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import Connection
from services import REDIS_URL

from ccat_buffering_redis._direct import (
    KEEP_SECONDS,
    DirectCall,
    Watch,
    Watchdog,
    direct_call,
    pack,
)


async def _until(condition: object, what: str, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.001)


def _in_use(client: aioredis.Redis) -> int:
    return len(client.connection_pool._in_use_connections)


def test_pack_writes_what_redis_py_writes() -> None:
    args = ("FCALL", "f", 2, "k:{é}", b"\x00\xff", "a\x1fb", -7, "x" * 70_000)
    expected = b"".join(Connection().pack_command(*args))
    assert pack(args, "utf-8", "strict") == expected


def test_pack_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(TypeError, match="str, bytes or int"):
        pack(("SET", "k", 1.5), "utf-8", "strict")  # type: ignore[arg-type]


async def test_only_plain_clients_get_a_direct_call(redis_client: aioredis.Redis) -> None:
    assert isinstance(direct_call(redis_client), DirectCall)
    pinned = aioredis.Redis.from_url(REDIS_URL, single_connection_client=True)
    try:
        assert direct_call(pinned) is None
    finally:
        await pinned.aclose()


async def test_replies_and_errors_are_redis_pys(redis_client: aioredis.Redis) -> None:
    call = DirectCall(redis_client)
    key = f"test-direct-{uuid.uuid4()}"
    try:
        assert await call("SET", key, "é") == b"OK"
        assert await call("GET", key) == await redis_client.get(key) == "é".encode()
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await call("LPUSH", key, "x")
        assert await call("INCRBY", f"{key}:n", 3) == 3
    finally:
        await redis_client.delete(key, f"{key}:n")


async def test_connections_go_back_to_the_pool(redis_client: aioredis.Redis) -> None:
    call = DirectCall(redis_client)
    for _ in range(20):
        assert await call("PING") == b"PONG"
    await _until(lambda: _in_use(redis_client) == 0, "the kept connection is back")
    with pytest.raises(redis.exceptions.ResponseError):
        await call("NO-SUCH-COMMAND")
    assert _in_use(redis_client) == 0, "a failed call's connection goes back at once"
    assert KEEP_SECONDS < 0.1


async def test_a_cancelled_call_hands_on_no_reply(redis_client: aioredis.Redis) -> None:
    """Cancelled while Redis still owes the reply: the next call gets its own."""
    call = DirectCall(redis_client)
    key = f"test-direct-{uuid.uuid4()}"
    task = asyncio.ensure_future(call("BLPOP", key, 5))
    await _until(lambda: _in_use(redis_client) == 1, "the BLPOP is sent")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await redis_client.rpush(key, "late")  # the BLPOP's reply would be this, if anyone read it
    try:
        for _ in range(3):
            assert await call("PING") == b"PONG"
    finally:
        await redis_client.delete(key)


async def test_a_reply_that_does_not_come_times_out() -> None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=0.2)
    key = f"test-direct-{uuid.uuid4()}"
    try:
        call = DirectCall(client)
        began = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            await call("BLPOP", key, 3)
        assert time.monotonic() - began < 2
        await client.rpush(key, "late")
        assert await call("PING") == b"PONG"
    finally:
        await client.delete(key)
        await client.aclose()


async def test_a_command_larger_than_the_socket_buffer_is_sent_whole(
    redis_client: aioredis.Redis,
) -> None:
    call = DirectCall(redis_client)
    key = f"test-direct-{uuid.uuid4()}"
    value = b"v" * (8 * 1024 * 1024)
    try:
        assert await call("SET", key, value) == b"OK"
        assert await redis_client.strlen(key) == len(value)
    finally:
        await redis_client.delete(key)


async def test_a_closed_client_connects_again(redis_client: aioredis.Redis) -> None:
    """As redis-py does: a client closed (its connections dropped) opens new ones."""
    call = DirectCall(redis_client)
    assert await call("PING") == b"PONG"
    await redis_client.connection_pool.disconnect()  # the kept connection too
    assert await call("PING") == b"PONG"


class _CountingConnection(Connection):
    """A connection with its own ``read_response``, as Sentinel's has."""

    reads = 0

    async def read_response(self, *args: object, **kwargs: object) -> object:
        type(self).reads += 1
        return await super().read_response(*args, **kwargs)  # type: ignore[arg-type]


async def test_a_connection_s_own_read_response_is_kept() -> None:
    """Sentinel's drops a connection to a demoted master there: it must still run."""
    client = aioredis.Redis.from_url(REDIS_URL, connection_class=_CountingConnection)
    try:
        call = direct_call(client)
        assert call is not None
        assert await call("PING") == b"PONG"  # connects (its handshake reads too)
        before = _CountingConnection.reads
        assert await call("PING") == b"PONG"
        assert _CountingConnection.reads == before + 1
    finally:
        await client.aclose()


async def _read_response(client: aioredis.Redis, *args: object) -> object:
    """``args``' reply as redis-py's ``read_response`` gives it (no response callbacks)."""
    conn = await client.connection_pool.get_connection()
    try:
        await conn.send_command(*args)
        return await conn.read_response()
    finally:
        await client.connection_pool.release(conn)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_the_lean_read_gives_what_read_response_gives(protocol: int) -> None:
    """The reply read from the hiredis reader equals redis-py's, for both protocols."""
    client = aioredis.Redis.from_url(REDIS_URL, protocol=protocol, socket_timeout=5)
    key = f"test-direct-{uuid.uuid4()}"
    call = DirectCall(client)
    lean = 0
    read = call._read

    async def counted(*args: object) -> object:
        nonlocal lean
        lean += 1
        return await read(*args)  # type: ignore[arg-type]

    call._read = counted  # type: ignore[method-assign]
    try:
        await client.hset(key, mapping={"a": "1", "b": "é"})
        for command in (
            ("HGETALL", key),
            ("HGET", key, "b"),
            ("HGET", key, "missing"),
            ("EVAL", "return {1, 'x', {2, false}}", 0),
            ("PING",),
        ):
            assert await call(*command) == await _read_response(client, *command), command
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await call("LPUSH", key, "x")
        assert lean == 6, "the lean read was taken"
    finally:
        await client.delete(key)
        await client.aclose()


async def test_a_push_before_the_reply_goes_to_its_handler() -> None:
    """RESP3: an invalidation pushed on the connection is not taken for the reply."""
    client = aioredis.Redis.from_url(REDIS_URL, protocol=3, single_connection_client=False)
    other = aioredis.Redis.from_url(REDIS_URL)
    key = f"test-direct-{uuid.uuid4()}"
    call = DirectCall(client)
    try:
        await client.set(key, "1")
        assert await call("CLIENT", "TRACKING", "ON") == b"OK"
        assert await call("GET", key) == b"1"  # the kept connection tracks the key now
        await other.set(key, "2")  # Redis pushes an invalidation on that connection
        await asyncio.sleep(0.001)
        assert await call("PING") == b"PONG"
        assert await call("GET", key) == b"2"
    finally:
        await other.delete(key)
        await other.aclose()
        await client.aclose()


async def test_reads_one_after_another_past_the_timeout_do_not_time_out() -> None:
    """One timer for every read: it fires at the first deadline and finds later ones alive."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=0.3)
    call = DirectCall(client)
    try:
        began = time.monotonic()
        while time.monotonic() - began < 1.2:  # the timer fires four times at least
            assert await call("PING") == b"PONG"
    finally:
        await client.aclose()


async def test_each_read_times_out_at_its_own_deadline() -> None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=0.4)
    key = f"test-direct-{uuid.uuid4()}"
    call = DirectCall(client)
    ended: dict[str, float] = {}

    async def hang(name: str) -> None:
        with pytest.raises(redis.exceptions.TimeoutError):
            await call("BLPOP", key, 5)
        ended[name] = time.monotonic()

    try:
        began = time.monotonic()
        first = asyncio.ensure_future(hang("first"))
        await asyncio.sleep(0.3)
        second = asyncio.ensure_future(hang("second"))
        assert await call("PING") == b"PONG"  # a read between them ends in time
        await asyncio.gather(first, second)
        assert 0.35 < ended["first"] - began < 2
        assert ended["second"] - ended["first"] > 0.15, "the second had its own, later deadline"
        assert await call("PING") == b"PONG"
    finally:
        await client.aclose()


def _reading(conn: object) -> bool:
    # The connection's handshake reads under redis-py's own timeout first.
    return isinstance(getattr(conn, "_active_read_timeout", None), Watch)


async def test_a_moved_deadline_is_kept() -> None:
    """redis-py's maintenance notices move a read's deadline: later, or sooner."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=1)
    key = f"test-direct-{uuid.uuid4()}"
    call = DirectCall(client)
    loop = asyncio.get_running_loop()
    try:
        task = asyncio.ensure_future(call("BLPOP", key, "1.5"))
        await _until(lambda: _in_use(client) == 1, "the BLPOP is sent")
        (conn,) = client.connection_pool._in_use_connections
        await _until(lambda: _reading(conn), "the reply is awaited")
        conn._active_read_timeout.reschedule(loop.time() + 4)  # type: ignore[attr-defined]
        assert await task is None, "BLPOP's own timeout (1.5 s) came first"

        slow = aioredis.Redis.from_url(REDIS_URL, socket_timeout=2)
        call = DirectCall(slow)
        began = time.monotonic()
        task = asyncio.ensure_future(call("BLPOP", key, 5))
        await _until(lambda: _in_use(slow) == 1, "the BLPOP is sent")
        (conn,) = slow.connection_pool._in_use_connections
        await _until(lambda: _reading(conn), "the reply is awaited")
        conn._active_read_timeout.reschedule(loop.time() + 0.05)  # type: ignore[attr-defined]
        with pytest.raises(redis.exceptions.TimeoutError):
            await task
        assert time.monotonic() - began < 1.5, "sooner than the socket_timeout (2 s)"
        await slow.aclose()
    finally:
        await client.aclose()


async def test_a_shorter_timeout_after_a_longer_one_keeps_its_own_deadline() -> None:
    """The timer set for a read with a long timeout does not wait past a later, shorter one."""
    watchdog = Watchdog()

    async def read(timeout: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        watchdog.watch(task, timeout)
        try:
            await asyncio.sleep(10)
        finally:
            watchdog.done(task)

    long = asyncio.ensure_future(read(5))
    await asyncio.sleep(0)  # its watch (and the timer, for 5 s) is set
    began = time.monotonic()
    short = asyncio.ensure_future(read(0.1))
    with pytest.raises(asyncio.CancelledError):
        await short
    assert time.monotonic() - began < 2, "cancelled at its own deadline, not the long one's"
    assert not long.done()
    long.cancel()


def test_the_watchdog_follows_the_event_loop() -> None:
    """A DirectCall used under a second asyncio.run() still bounds its reads."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=0.2)
    call = DirectCall(client)
    key = f"test-direct-{uuid.uuid4()}"

    async def once() -> None:
        began = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            await call("BLPOP", key, 3)
        assert time.monotonic() - began < 1.5
        await client.connection_pool.disconnect()

    asyncio.run(once())
    asyncio.run(once())


async def test_an_outer_cancel_during_a_read_stays_a_cancel() -> None:
    """The caller's cancel is not taken for the deadline, even near it."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=0.2)
    key = f"test-direct-{uuid.uuid4()}"
    call = DirectCall(client)
    try:
        task = asyncio.ensure_future(call("BLPOP", key, 3))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await call("PING") == b"PONG"
    finally:
        await client.aclose()
