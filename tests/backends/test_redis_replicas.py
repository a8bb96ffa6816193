"""Acknowledged means replicated: ``min_replicas`` and the policy switched at run time.

Each test starts its own servers on loopback (``redis_servers.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from redis_servers import ThrowawayRedis, redis_cluster, redis_sentinel
from services import started

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.errors import (
    BackendUnavailableError,
    ConfigurationError,
    WriteNotReplicatedError,
)
from ccat_buffering.testing import new_site_name
from ccat_buffering_redis import RedisBackend
from ccat_buffering_redis._memory import POLICY_RECHECK_SECONDS

from support import observation


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[dict[str, object]]:
    with started(redis_sentinel()) as ports:
        yield ports


async def test_a_write_no_replica_holds_is_not_acknowledged() -> None:
    with started(ThrowawayRedis()) as server:
        url = server.url + "?min_replicas=1&min_replicas_timeout=0.05"
        async with RedisBackend.from_url(url, site=new_site_name()) as backend:
            manager = TransactionManager(backend)
            tx = observation(1)[0]
            with pytest.raises(WriteNotReplicatedError) as refused:
                await manager.buffer(tx)
            message = str(refused.value)
            assert "0 of the 1 replica" in message and "may or may not be buffered" in message
            assert "again is safe" in message
            assert isinstance(refused.value, BackendUnavailableError)
            # The drain still works without replicas: acks and claims never wait.
            (delivery,) = await manager.claim(1, 30)
            await manager.committed([delivery], None)
            assert (await backend.buffer.stats()).depth == 0


async def test_a_write_the_replica_holds_is_acknowledged_and_on_the_replica(
    sentinel_set: dict[str, object],
) -> None:
    master = f"redis://127.0.0.1:{sentinel_set['master']}/0?min_replicas=1"
    async with RedisBackend.from_url(master, site=new_site_name()) as backend:
        manager = TransactionManager(backend)
        for i in range(20):
            await manager.buffer(observation(i)[0])
        # WAIT answered: the replica applied every write before buffer() returned.
        replica = redis.Redis(port=int(sentinel_set["replica"]))  # type: ignore[call-overload]
        assert replica.llen(backend.keys.buffer) == 20
        replica.close()


async def test_sentinel_url_waits_for_the_replica(sentinel_set: dict[str, object]) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel_set['sentinel']}/site-buffer"
    settings = BufferingSettings(site_name=new_site_name(), backend_url=url, redis_min_replicas=1)
    options = settings.backend_options()
    assert options["min_replicas"] == 1
    async with RedisBackend.from_url(url, site=settings.site_name, **options) as backend:
        assert backend.min_replicas == 1
        await TransactionManager(backend).buffer(observation(1)[0])
        assert (await backend.buffer.stats()).depth == 1


async def test_cluster_waits_on_the_slot_owner() -> None:
    with started(redis_cluster()) as ports:
        url = f"redis+cluster://127.0.0.1:{ports[0]}?min_replicas=1&min_replicas_timeout=0.05"
        async with RedisBackend.from_url(url, site=new_site_name()) as backend:
            # The cluster the tests start has no replicas: nothing is acknowledged.
            with pytest.raises(WriteNotReplicatedError):
                await TransactionManager(backend).buffer(observation(1)[0])
        async with RedisBackend.from_url(
            f"redis+cluster://127.0.0.1:{ports[0]}", site=new_site_name()
        ) as plain:
            await TransactionManager(plain).buffer(observation(1)[0])


@pytest.mark.parametrize(
    "query",
    ["min_replicas=-1", "min_replicas=one", "min_replicas_timeout=0", "min_replicas_timeout=x"],
)
def test_bad_replica_settings_are_refused(query: str) -> None:
    with pytest.raises(ConfigurationError, match="min_replicas"):
        RedisBackend.from_url(f"redis://127.0.0.1:1/0?{query}", site=new_site_name())


async def test_an_eviction_policy_switched_at_run_time_stops_acknowledgements() -> None:
    with started(ThrowawayRedis()) as server:
        async with RedisBackend.from_url(server.url, site=new_site_name()) as backend:
            manager = TransactionManager(backend)
            await manager.buffer(observation(0)[0])
            server.client().config_set("maxmemory-policy", "allkeys-lru")
            switched = time.monotonic()
            acked = 0
            with pytest.raises(ConfigurationError, match="allkeys-lru"):
                while time.monotonic() - switched < 10 * POLICY_RECHECK_SECONDS:
                    await manager.buffer(observation(acked + 1)[0])
                    acked += 1
            # Refused within the stated bound (with room for a slow machine).
            assert time.monotonic() - switched < POLICY_RECHECK_SECONDS + 1.0
            stopped_at = acked
            with pytest.raises(ConfigurationError):
                await manager.buffer(observation(10_000)[0])
            assert (await backend.buffer.stats()).depth == 1 + stopped_at
