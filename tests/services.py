"""Real services for the tests: found, or started on loopback, or skipped.

A test that needs a service skips with the reason when it is missing, except
under ``CCAT_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where it fails.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import Any, TypeVar

import pytest
from servers import ServiceMissing

from ccat_buffering.testing import new_site_name

T = TypeVar("T")

REDIS_URL = os.environ.get("CCAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "CCAT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


def required() -> bool:
    return os.environ.get("CCAT_REQUIRE_SERVICES") == "1"


def missing(reason: str) -> None:
    """Skip the test, or fail it when services are required."""
    if required():
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


@contextmanager
def started(servers: AbstractContextManager[T]) -> Iterator[T]:
    """Enter a throwaway-server context, turning what the machine lacks into ``missing``."""
    try:
        value = servers.__enter__()
    except ServiceMissing as exc:
        missing(str(exc))
        raise
    try:
        yield value
    finally:
        servers.__exit__(None, None, None)


async def redis_client() -> object:
    """A client of the test Redis, or ``missing`` when it does not answer."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        missing(f"no Redis at {REDIS_URL}: {exc}")
    return client


async def require_redis() -> None:
    """Skip (or, where required, fail) unless the test Redis answers."""
    client = await redis_client()
    await client.aclose()  # type: ignore[attr-defined]


async def forget_site(client: object, pattern: str) -> None:
    """Delete every key of a test's site (never the whole database).

    The scan asks for 1,000 keys a call: db 15 holds every other test's (and
    benchmark's) keys too, and SCAN's default of 10 took thousands of calls and
    seconds per test once it held some tens of thousands.
    """
    keys = [k async for k in client.scan_iter(match=pattern, count=1000)]  # type: ignore[attr-defined]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])  # type: ignore[attr-defined]


async def site_dump(
    client: object, prefix: str, pattern: str
) -> dict[str, tuple[str, object, int]]:
    """Every key of a test's site: its name after ``prefix``, its type, value and PTTL.

    For tests that compare what two ways of writing left behind, key by key.
    """
    c: Any = client
    out: dict[str, tuple[str, object, int]] = {}
    async for raw in c.scan_iter(match=pattern, count=1000):
        key = raw.decode()
        kind = (await c.type(key)).decode()
        if kind == "string":
            value: object = await c.get(key)
        elif kind == "list":
            value = await c.lrange(key, 0, -1)
        elif kind == "zset":
            value = await c.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = await c.smembers(key)
        else:
            value = await c.hgetall(key)
        out[key[len(prefix) :]] = (kind, value, await c.pttl(key))
    return out


# Scored by the script's clock (expiries, leases): compared by members, scores close.
TIMED_KEYS = ("state:replicated", "state:failed", "inflight:leases")


def assert_same_sites(
    first: dict[str, tuple[str, Any, int]],
    second: dict[str, tuple[str, Any, int]],
    timed: tuple[str, ...] = TIMED_KEYS,
) -> None:
    """Two :func:`site_dump` results hold the same keys, values and TTLs.

    TTLs may be a few seconds apart; keys that start with one of ``timed`` are
    scored by the script's clock: the same members, scores a few seconds apart.
    """
    assert first.keys() == second.keys()
    for key, (kind, value, ttl) in first.items():
        other_kind, other_value, other_ttl = second[key]
        assert kind == other_kind, key
        assert ttl == other_ttl or (ttl > 0 and other_ttl > 0 and abs(ttl - other_ttl) < 5000), (
            key,
            ttl,
            other_ttl,
        )
        if key.startswith(timed):
            assert [m for m, _ in value] == [m for m, _ in other_value], key
            assert all(
                abs(s - t) < 5000 for (_, s), (_, t) in zip(value, other_value, strict=True)
            ), key
        else:
            assert value == other_value, key


async def with_and_without(
    client: Any, backend_class: type[T], capability: str
) -> AsyncIterator[tuple[T, T]]:
    """Two sites of ``backend_class``, the second without ``capability``; forgotten after.

    For a fixture: ``yield`` from it (see :func:`without_capability`).
    """
    first = backend_class(client, site=new_site_name())  # type: ignore[call-arg]
    second = without_capability(backend_class, capability)(client, site=new_site_name())  # type: ignore[call-arg]
    try:
        yield first, second
    finally:
        for backend in (first, second):
            await forget_site(client, backend.keys.pattern())  # type: ignore[attr-defined]


def without_capability(backend_class: type[T], name: str) -> type[T]:
    """A subclass of a backend whose write batches lack ``name`` (a capability).

    The manager then takes the path it takes for a store without it: tests
    compare what the two paths leave behind.
    """

    class _Without:
        def __init__(self, batch: Any) -> None:
            self._batch = batch

        def __getattr__(self, attribute: str) -> Any:
            if attribute == name:
                raise AttributeError(attribute)
            return getattr(self._batch, attribute)

    class Without(backend_class):  # type: ignore[valid-type,misc]
        @asynccontextmanager
        async def atomic(self) -> AsyncIterator[Any]:
            async with super().atomic() as batch:
                yield _Without(batch)

    Without.__name__ = f"{backend_class.__name__}Without_{name}"
    return Without  # type: ignore[return-value]
