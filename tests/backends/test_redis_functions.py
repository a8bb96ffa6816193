"""``APPLY`` as a Redis Function library: loaded when missing, the same Lua as the script.

See :mod:`ccat_buffering_redis._functions`. The contract suite runs the write
path both ways (``TestRealRedis`` through ``FCALL``, ``TestRealRedisScripts``
through ``EVALSHA``); these tests cover the loading and the fallbacks.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis_servers import redis_cluster
from services import forget_site, started

from ccat_buffering.testing import new_site_name
from ccat_buffering_redis import RedisBackend, scripts


async def _libraries(client: aioredis.Redis) -> set[str]:
    listed = await client.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "ccat_buffering_*")
    return {library[b"library_name"].decode() for library in listed}


async def _push(backend: RedisBackend, payload: str) -> None:
    async with backend.atomic() as batch:  # one APPLY group
        batch.push(payload)


async def _calls(client: aioredis.Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_write_loads_the_library_once_and_calls_it(redis_client: aioredis.Redis) -> None:
    library = scripts.LIBRARIES["apply"]
    backend = RedisBackend(redis_client, site=new_site_name())
    try:
        await _push(backend, "one")  # loads it if this server lacks it
        assert library.name in await _libraries(redis_client)
        before = await _calls(redis_client, "fcall")
        await _push(backend, "two")
        # At least: other clients of a shared server may call functions meanwhile.
        assert await _calls(redis_client, "fcall") >= before + 1
        assert (await backend.buffer.stats()).depth == 2
    finally:
        await forget_site(redis_client, backend.keys.pattern())


async def test_a_library_lost_with_a_restart_is_loaded_again(redis_client: aioredis.Redis) -> None:
    """A Redis restarted without persistence (or a failover to a node that never
    had it) answers ``Function not found``: the call loads it and runs."""
    library = scripts.LIBRARIES["apply"]
    backend = RedisBackend(redis_client, site=new_site_name())
    try:
        await _push(backend, "one")
        await redis_client.execute_command("FUNCTION", "DELETE", library.name)
        await _push(backend, "two")
        assert library.name in await _libraries(redis_client)
        assert backend._functions["apply"].usable
        assert (await backend.buffer.stats()).depth == 2
    finally:
        await forget_site(redis_client, backend.keys.pattern())


async def test_every_site_gets_its_own_keys_from_the_one_library(
    redis_client: aioredis.Redis,
) -> None:
    """The library keeps the site's key names between calls: a call for another
    site must make them again, not write to the last site's keys."""
    first = RedisBackend(redis_client, site=new_site_name())
    second = RedisBackend(redis_client, site=new_site_name())
    try:
        for i in range(3):
            await _push(first, f"a{i}")
            await _push(second, f"b{i}")
        assert (await first.buffer.stats()).depth == 3
        assert (await second.buffer.stats()).depth == 3
    finally:
        await forget_site(redis_client, first.keys.pattern())
        await forget_site(redis_client, second.keys.pattern())


async def test_on_a_cluster_the_library_is_on_every_primary_and_called() -> None:
    library = scripts.LIBRARIES["apply"]
    with started(redis_cluster()) as ports:
        client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports])
        backend = RedisBackend(client, site=new_site_name())
        try:
            await _push(backend, "one")
            await _push(backend, "two")
            assert backend._functions["apply"].usable
            assert (await backend.buffer.stats()).depth == 2
            for port in ports:
                node = aioredis.Redis(port=port)
                try:
                    if (await node.info("replication"))["role"] == "master":
                        assert library.name in await _libraries(node), port
                finally:
                    await node.aclose()
        finally:
            await client.aclose()


def test_the_library_is_the_script_with_its_state_reset_per_call() -> None:
    library = scripts.LIBRARIES["apply"]
    assert library.script == scripts.SCRIPTS["apply"]
    assert library.code.startswith(f"#!lua name={library.name}\n")
    assert f"redis.register_function('{library.function}'," in library.code
    assert scripts.SCRIPTS["apply"].rstrip().endswith("return apply()")
    # The call's state is made afresh in a reset, not once at load; the
    # server's time is left unread until now() needs it, the general path's
    # tables until it runs (begin_stage), the staging of index and field
    # index entries until a first entry; the registrations read are new.
    for state in ("PUSHES = nil", "NOW = nil", "TYPES = nil", "FIELD_ADD = nil", "REGISTERED = {}"):
        assert f"\n  {state}\n" in library.code, state
    assert "\nlocal NOW\n" in library.code
    # A table marked to be kept across calls is made once, at load, though it is written
    # to: the tokens (overwritten by each call) and decimal()'s cache.
    for kept in ("T", "DECIMAL"):
        assert f"\nlocal {kept} = {{" in library.code, kept
        assert f"\n  {kept} = " not in library.code, kept


def test_a_script_that_cannot_be_a_library_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = {
        "nocall": "-- include: prelude\nreturn 1\n",
        "toplevel": "-- include: prelude\nif NOW then return 1 end\n-- call: f\n",
    }
    monkeypatch.setattr(scripts, "_fragment", lambda name: texts.get(name, ""))
    with pytest.raises(ValueError, match="call"):
        scripts.library("nocall")
    with pytest.raises(ValueError, match="runs at each call"):
        scripts.library("toplevel")
