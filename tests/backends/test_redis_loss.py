"""Buffer loss is told while the main database is down, and by a worker started then."""

from __future__ import annotations

from pathlib import Path

from redis_servers import ThrowawayRedis
from services import started
from sqlalchemy.ext.asyncio import create_async_engine

from ccat_buffering.buffer_loss import BufferWatch
from ccat_buffering.manager import TransactionManager
from ccat_buffering.testing import new_site_name
from ccat_buffering_redis import RedisBackend

from support import observation, sqlite_url

DOWN = "postgresql+asyncpg://postgres@127.0.0.1:9/none"  # nothing listens there


async def test_a_worker_started_during_an_outage_tells_a_restart_without_persistence(
    tmp_path: Path,
) -> None:
    state, site = tmp_path / "state", new_site_name()
    down = create_async_engine(DOWN)
    with started(ThrowawayRedis()) as server:
        async with RedisBackend.from_url(server.url, site=site) as backend:
            watch = BufferWatch(down, backend, state_dir=state)
            assert await watch.check() == []  # stamps the buffer; the database is not needed
            manager = TransactionManager(backend)
            ids = set()
            for i in range(50):
                ids.add((await manager.buffer(observation(i)[0])).transaction_id)
            assert await watch.check() == []
            assert watch.sightings.read().last.held == 50  # type: ignore[union-attr]
        server.kill9()
        server.start()
        # A new worker process, the database still down: it compares with this host's disk.
        async with RedisBackend.from_url(server.url, site=site) as backend:
            (loss,) = await BufferWatch(down, backend, state_dir=state).check()
            assert "marker is gone" in loss.cause and loss.held == 50 and not loss.recorded
            # Exact: which of the transactions held then are gone, and how many.
            assert loss.missing == 50 and set(loss.missing_ids) == ids
            assert "50 of them gone" in loss.describe()
            # Reported once: the next look follows from the new marker.
            assert len(await BufferWatch(down, backend, state_dir=state).check()) == 1

            # The database is back: the loss is written there once, and acknowledged once.
            database = create_async_engine(sqlite_url(tmp_path))
            try:
                back = BufferWatch(database, backend, state_dir=state)
                (recorded,) = await back.check()
                assert recorded.held == 50 and recorded.recorded
                assert recorded.missing == 50 and set(recorded.missing_ids) == ids
                assert len(await back._database_losses()) == 1
                assert await back.acknowledge() == 1
                assert await back.check() == []
            finally:
                await database.dispose()
    await down.dispose()


async def test_loss_free_runs_report_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with started(ThrowawayRedis("--appendonly", "yes", "--appendfsync", "always")) as server:
        site = new_site_name()
        async with RedisBackend.from_url(server.url, site=site) as backend:
            watch = BufferWatch(None, backend, state_dir=state)
            await watch.check()
            manager = TransactionManager(backend)
            for i in range(20):
                await manager.buffer(observation(i)[0])
                assert await watch.check() == []
            (delivery, *_) = await manager.claim(5, 30)
            await manager.committed([delivery], None)
            assert await watch.check() == []
        server.client().shutdown(save=False)  # a clean stop: the AOF holds everything
        server.start()
        async with RedisBackend.from_url(server.url, site=site) as backend:
            # The restart changed the replication id; the counter did not go back.
            assert await BufferWatch(None, backend, state_dir=state).check() == []
