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

from ccat_buffering_redis._direct import KEEP_SECONDS, DirectCall, direct_call, pack


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
