"""A site always stops: ``stop()`` returns in bounded time, cancelled at any point.

Each round starts a coordinator (processor, tracker and, on Redis, the buffer
watch looking without a pause, so that a stop lands inside its database and
Redis calls), buffers a few transactions, waits a random time and stops it.
Hundreds of rounds on memory and SQLite, fewer on Redis and PostgreSQL with
both drivers; then a stop while Redis is stopped (SIGSTOP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from pg import fresh_database
from redis_servers import ThrowawayRedis
from services import REDIS_URL, require_redis, started
from sqlalchemy.engine import make_url
from sqlalchemy.exc import PendingRollbackError
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.config.backends import open_backend
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.demo.example import Base
from ccat_buffering.drain._stopping import CANCEL_BOUND, finish_or_cancel
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.observe.buffer_loss import watch_buffer
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.registry import ModelRegistry

from support import make_schema, observation, sqlite_url

GRACE = 0.5
BOUND = GRACE + CANCEL_BOUND + 0.5
"""What one stop may take: the grace, the cancel bound, and room for a slow machine."""


async def _rounds(engine: AsyncEngine, url: str, rounds: int, seed: int) -> None:
    registry = ModelRegistry.from_base(Base)
    rng = random.Random(seed)
    slowest = 0.0
    for n in range(rounds):
        site = new_site_name()
        settings = BufferingSettings(
            site_name=site, backend_url=url, database_url="sqlite+aiosqlite://", poll_interval=0.01
        )
        backend = open_backend(url, site=site)
        coordinator = BufferingCoordinator(settings, backend, engine, registry, start=False)
        coordinator.watch_interval = 0.0
        try:
            coordinator.start()
            for i in range(rng.randint(0, 3)):
                await coordinator.manager.buffer(observation(n * 10 + i)[0])
            for _ in range(rng.randint(0, 20)):  # a random number of turns of the loop
                await asyncio.sleep(0)
            await asyncio.sleep(rng.random() * 0.01)
            watch, tracker = coordinator._watch_task, coordinator._tracker_task
            started_at = time.monotonic()
            await asyncio.wait_for(coordinator.stop(grace=GRACE), BOUND)
            slowest = max(slowest, time.monotonic() - started_at)
            for task in (watch, tracker, coordinator.processor._task):
                assert task is None or task.done(), f"round {n}: {task} still runs"
            assert not coordinator.processor._running
        finally:
            await backend.aclose()
    assert slowest < BOUND


class _SwallowingWatch:
    """A watch whose database call turns its cancellation into another error, as a driver may."""

    def __init__(self) -> None:
        self.log = logging.getLogger("test")
        self.looks = 0

    async def check(self) -> list[object]:
        self.looks += 1
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            raise PendingRollbackError(
                "Can't reconnect until invalid transaction is rolled back"
            ) from None
        return []

    def cancel_copy(self) -> None:
        pass


async def test_a_cancellation_turned_into_another_error_still_ends_the_watch() -> None:
    watch = _SwallowingWatch()
    task = asyncio.create_task(watch_buffer(watch, 0.0))  # type: ignore[arg-type]
    while watch.looks < 3:
        await asyncio.sleep(0.005)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1.0)
    assert task in done and task.cancelled()


async def test_finish_or_cancel_cancels_again_until_the_task_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while swallowed < 3:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1  # a clean-up that eats the cancellation
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await finish_or_cancel(task, bound=1.0)
    assert swallowed == 3 and task.cancelled()

    release = asyncio.Event()

    async def never_ends() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    forever = asyncio.create_task(never_ends())
    await asyncio.sleep(0)
    started_at = time.monotonic()
    assert not await finish_or_cancel(forever, bound=0.2)
    assert time.monotonic() - started_at < 1.0
    release.set()
    await forever


async def test_memory_and_sqlite_stop_at_any_point(tmp_path: Path) -> None:
    engine = create_engine(sqlite_url(tmp_path))
    await make_schema(engine)
    await TransactionExecutor(engine, ModelRegistry.from_base(Base)).create_ledger()
    try:
        await _rounds(engine, "memory://", 200, seed=1)
    finally:
        await engine.dispose()


@pytest_asyncio.fixture(params=["asyncpg", "psycopg"])
async def pg_engine(request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    async with fresh_database() as url:
        engine = create_engine(
            make_url(url).set(drivername=f"postgresql+{request.param}").render_as_string(False)
        )
        await make_schema(engine)
        await TransactionExecutor(engine, ModelRegistry.from_base(Base)).create_ledger()
        try:
            yield engine
        finally:
            await engine.dispose()


async def test_redis_and_postgres_stop_at_any_point(pg_engine: AsyncEngine) -> None:
    await require_redis()
    await _rounds(pg_engine, REDIS_URL, 25, seed=2)


async def test_a_site_whose_redis_hangs_still_stops(pg_engine: AsyncEngine) -> None:
    with started(ThrowawayRedis()) as server:
        site = new_site_name()
        settings = BufferingSettings(
            site_name=site,
            backend_url=server.url,
            database_url="sqlite+aiosqlite://",
            poll_interval=0.01,
        )
        backend = open_backend(server.url, site=site)
        coordinator = BufferingCoordinator(
            settings, backend, pg_engine, ModelRegistry.from_base(Base), start=False
        )
        coordinator.watch_interval = 0.0
        coordinator.start()
        await coordinator.manager.buffer(observation(1)[0])
        server.pause()  # every call now waits out the 5 s socket timeout
        try:
            await asyncio.sleep(0.2)
            started_at = time.monotonic()
            await asyncio.wait_for(coordinator.stop(grace=GRACE), BOUND)
            assert time.monotonic() - started_at < BOUND
        finally:
            server.resume()
            await backend.aclose()
