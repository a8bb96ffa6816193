"""An operator's pause of the drain: kept in the buffer, audited, shown; buffering goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from ccat_buffering.buffer import audit
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.confirm.replication import ImmediateReplicationChecker, ReplicationTracker
from ccat_buffering.drain import operator_pause
from ccat_buffering.drain.processor import BackgroundProcessor, ProcessorState
from ccat_buffering.observe.health import collect
from ccat_buffering.testing import new_site_name
from ccat_buffering_redis import RedisBackend

from support import memory_sqlite_site, observation, units_in_order


async def test_a_paused_site_keeps_buffering_and_drains_nothing_until_resumed(
    tmp_path: Path,
) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        await site.manager.buffer_many([observation(i)[0] for i in range(3)])
        held = await operator_pause.pause(site.backend, reason="migration", principal="os:ops@h")
        assert held.cause.startswith("paused by operator os:ops@h since ")
        assert held.cause.endswith(": migration")
        assert await site.processor.run_once() == 0
        assert site.processor.state is ProcessorState.PAUSED
        assert site.processor.cause == held.cause
        await site.manager.buffer(observation(3)[0])  # refused for nothing else
        stats = await site.backend.buffer.stats()
        assert (stats.depth, stats.in_flight) == (4, 0)
        # A restarted worker sees the pause too: it is kept in the buffer's store.
        other = BackgroundProcessor(site.manager, site.executor, clock=site.clock)
        site.clock.advance(site.processor.lease_ttl + 1)
        assert await other.run_once() == 0
        settings = BufferingSettings(site_name=site.backend.site, database_url=site.url)
        tracker = ReplicationTracker(site.manager, ImmediateReplicationChecker())
        health = await collect(settings, site.backend, other, tracker)
        assert health.operator_pause == held.cause
        assert any("paused by operator" in w for w in health.warnings)
        assert sum("paused by operator" in w for w in health.warnings) == 1

        was = await operator_pause.resume(site.backend, principal="os:ops@h")
        assert was == held
        assert await operator_pause.current(site.backend) is None
        while await other.run_once():
            pass
        assert await units_in_order(site.engine) == [0, 1, 2, 3]
        assert other.state is not ProcessorState.PAUSED
        actions = [(e.action, e.count) for e in await audit.list(site.backend)]
        assert actions == [("drain.resume", 1), ("drain.pause", 1)]
        assert await operator_pause.resume(site.backend) is None  # nothing to resume


async def test_the_pause_survives_a_new_redis_client(redis_client: aioredis.Redis) -> None:
    site = new_site_name()
    first = RedisBackend(redis_client, site=site)
    try:
        await operator_pause.pause(first, reason="db upgrade")
        second = RedisBackend(redis_client, site=site)
        held = await operator_pause.current(second)
        assert held is not None and held.reason == "db upgrade"
        assert await operator_pause.resume(second) is not None
        assert await operator_pause.current(first) is None
        assert await redis_client.exists(first.keys.pause) == 0
    finally:
        keys = [k async for k in redis_client.scan_iter(match=first.keys.pattern(), count=1000)]
        if keys:
            await redis_client.delete(*keys)


async def test_a_pause_note_must_be_text(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        with pytest.raises(TypeError, match="pause note"):
            await site.backend.set_operator_pause(b"x")  # type: ignore[arg-type]
