"""The contract suite on every Redis setup: fakeredis, a real Redis (also with
compression), a real Cluster, and a real master found through a Sentinel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import fakeredis
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis_servers import redis_cluster, redis_sentinel
from services import forget_site, started

from ccat_buffering.testing import (
    AtomicContract,
    BackendContract,
    BufferStoreContract,
    CacheStoreContract,
    StatusStoreContract,
)
from ccat_buffering_redis import RedisBackend

# Redis keeps TTLs in milliseconds: the contract's unit of every TTL it waits
# out is half a second here (the default is a second), and a time Redis
# reports is held to within half a second of the test's clock.
TICK = 0.5


class RedisContract(BackendContract):
    """What every Redis setup has beyond the stores: each capability, on half-second ticks."""

    tick = TICK
    clock_tolerance_seconds = TICK
    supports_processor_reports = True
    supports_inspection = True
    supports_key_audit = True
    supports_buffer_health = True
    supports_buffer_marker = True
    supports_audit_log = True
    supports_status_paging = True
    supports_letter_paging = True
    supports_chart_samples = True


class TestFakeRedis(RedisContract):
    @pytest_asyncio.fixture
    async def backend(self, site: str) -> AsyncIterator[RedisBackend]:
        client = fakeredis.FakeAsyncRedis()
        async with RedisBackend(client, site=site) as backend:
            yield backend
        await client.aclose()


class TestRealRedis(RedisContract):
    @pytest_asyncio.fixture
    async def backend(self, site: str, redis_client: aioredis.Redis) -> AsyncIterator[RedisBackend]:
        async with RedisBackend(redis_client, site=site) as backend:
            yield backend
        await forget_site(redis_client, backend.keys.pattern())


class TestRealRedisCompressed(RedisContract):
    """Every reader of the contract sees text, though the entries are stored compressed."""

    @pytest_asyncio.fixture
    async def backend(self, site: str, redis_client: aioredis.Redis) -> AsyncIterator[RedisBackend]:
        async with RedisBackend(redis_client, site=site, compression="zlib") as backend:
            yield backend
        await forget_site(redis_client, backend.keys.pattern())


@pytest.fixture(scope="module")
def cluster_ports() -> Iterator[list[int]]:
    with started(redis_cluster()) as ports:
        yield ports


class TestRedisCluster(RedisContract):
    @pytest_asyncio.fixture
    async def backend(self, site: str, cluster_ports: list[int]) -> AsyncIterator[RedisBackend]:
        client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster_ports])
        async with RedisBackend(client, site=site) as backend:
            yield backend
        await client.aclose()


@pytest.fixture(scope="module")
def sentinel_port() -> Iterator[int]:
    with started(redis_sentinel()) as ports:
        yield int(ports["sentinel"])  # type: ignore[call-overload]


class TestRedisSentinel(RedisContract):
    @pytest_asyncio.fixture
    async def backend(self, site: str, sentinel_port: int) -> AsyncIterator[RedisBackend]:
        url = f"redis+sentinel://127.0.0.1:{sentinel_port}/site-buffer"
        async with RedisBackend.from_url(url, site=site) as backend:
            yield backend


class TestRealRedisScripts(
    BufferStoreContract, StatusStoreContract, CacheStoreContract, AtomicContract
):
    """``APPLY`` as the script it falls back to (``EVALSHA``): the same contract as the function.

    The contracts whose writes go through ``APPLY`` (the buffer, statuses, caches and
    atomic groups); the other stores' scripts are the same either way.
    """

    tick = TICK
    clock_tolerance_seconds = TICK

    @pytest_asyncio.fixture
    async def backend(self, site: str, redis_client: aioredis.Redis) -> AsyncIterator[RedisBackend]:
        async with RedisBackend(redis_client, site=site) as backend:
            backend._functions["apply"].usable = False
            yield backend
        await forget_site(redis_client, backend.keys.pattern())
