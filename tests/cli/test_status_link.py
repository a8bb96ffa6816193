"""``status`` with the main database a long link away: quick, and honest about what it missed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from pg import fresh_database
from services import REDIS_URL
from sqlalchemy.engine import make_url

import ccat_buffering.observe._health_reads as health_reads
from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.cli._operator import open_site
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.drain.database import create_engine
from ccat_buffering.observe.buffer_loss import BufferWatch
from ccat_buffering.observe.health import Health
from ccat_buffering.testing import new_site_name
from ccat_buffering_redis import RedisBackend

from support import observation

RTT = 0.2
BOUND = 1.5
MAX_ROUND_TRIPS = int(BOUND / RTT)  # what fits in BOUND at RTT: 7


@asynccontextmanager
async def drained_site(
    tmp_path: Path, redis_client: aioredis.Redis, rtt: float = RTT
) -> AsyncIterator[tuple[str, str, LoopbackRelay]]:
    """A site whose worker drained cleanly and copied its look to the main database.

    Yields the site's name, the main database's URL through a relay of ``rtt`` s, and the relay.
    """
    site = new_site_name()
    async with fresh_database() as url:
        engine = create_engine(url)
        backend = RedisBackend(redis_client, site=site)
        watch = BufferWatch(engine, backend, state_dir=tmp_path / "worker", save_every=0)
        await watch.create_tables()
        manager = TransactionManager(backend)
        await manager.buffer_many([observation(i)[0] for i in range(3)])
        await manager.committed(await manager.claim(3, 60), None)
        assert await watch.check() == []  # the worker's look, kept on disk and in the database
        await engine.dispose()
        target = make_url(url)
        relay = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432, delay=rtt / 2)
        await relay.start()
        try:
            far = target.set(host="127.0.0.1", port=relay.port)
            yield site, far.render_as_string(hide_password=False), relay
        finally:
            await relay.stop()
            keys = [
                k async for k in redis_client.scan_iter(match=backend.keys.pattern(), count=1000)
            ]
            if keys:
                await redis_client.delete(*keys)


async def _status(site: str, database: str, state_dir: Path) -> tuple[Health, float]:
    settings = BufferingSettings(
        site_name=site,
        site_type="secondary",
        backend_url=REDIS_URL,
        database_url=database,
        state_dir=state_dir,
    )
    async with open_site(settings, replica=True, database=True, lean_database=True) as operator:
        began = time.perf_counter()
        health = await operator.health()
        return health, time.perf_counter() - began


def _loss_warnings(health: Health) -> list[str]:
    return [w for w in health.warnings if "lost state" in w or "could not check" in w]


async def test_status_over_a_long_link_answers_in_time_without_a_false_loss(
    tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    async with drained_site(tmp_path, redis_client) as (site, far, _relay):
        # On the worker's host (its sightings on disk) and on one that never
        # looked (the main database's sighting), at once: each is a new status.
        (on_worker, worker_took), (elsewhere, elsewhere_took) = await asyncio.gather(
            _status(site, far, tmp_path / "worker"), _status(site, far, tmp_path / "elsewhere")
        )
        round_trips = _relay.counters.round_trips
    assert _loss_warnings(on_worker) == [] and _loss_warnings(elsewhere) == []
    # The goal is a time (BOUND at RTT), measured by bench/status_bench.py; here its cause,
    # counted by the relay: at most 7 round trips each (1.4 s of link), 6 today. A busy
    # machine stretches the rest of a status; a status gone back to its round trips in
    # series (4.5 s) fails both counts.
    assert round_trips <= 2 * MAX_ROUND_TRIPS, round_trips
    assert worker_took < 2 * BOUND and elsewhere_took < 2 * BOUND


async def test_a_hung_check_says_no_answer_and_the_next_status_is_clean(
    tmp_path: Path, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health_reads, "WATCH_TIMEOUT", 0.5)
    async with drained_site(tmp_path, redis_client, rtt=0.02) as (site, far, relay):
        settings = BufferingSettings(
            site_name=site, site_type="secondary", backend_url=REDIS_URL, database_url=far
        )
        settings = settings.model_copy(update={"state_dir": tmp_path / "worker"})
        async with open_site(settings, database=True) as operator:
            relay.hang()
            began = time.perf_counter()
            hung = await operator.health()
            assert time.perf_counter() - began < 1.5
            assert _loss_warnings(hung) == [
                "could not check the buffer against the main database for lost state: "
                "no answer in 0.5 s"
            ]
            # The cancelled look let go of its connection without waiting on the link.
            deadline = time.monotonic() + 1.0
            while health_reads._ABANDONED and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert not health_reads._ABANDONED
            relay.answer()
            # The same engine again: no connection left needing a rollback.
            assert _loss_warnings(await operator.health()) == []
