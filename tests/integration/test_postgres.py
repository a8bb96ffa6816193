"""Draining into a real PostgreSQL: LSNs, the ledger, poison, conflicts and outages."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pg import fresh_database
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.demo.example import ExecutedObsUnit, RawDataPackage
from ccat_buffering.drain.database import create_engine, ledger_table
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor, ProcessorState
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import TransactionState

from support import Site, build_site, observation, orphan_package


@pytest_asyncio.fixture
async def pg_url() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


async def _site(url: str, *, ledger: bool = True) -> Site:
    return await build_site(url, seed=3, outage_base_delay=None, ledger=ledger)


@pytest_asyncio.fixture
async def site(pg_url: str) -> AsyncIterator[Site]:
    built = await _site(pg_url)
    yield built
    await built.engine.dispose()


async def _count(engine: AsyncEngine, column: object) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count(column)))).scalar_one())  # type: ignore[arg-type]


async def test_batch_commits_once_and_reads_the_lsn_after_commit(site: Site) -> None:
    async with site.engine.connect() as conn:
        before = LSN(
            (await conn.execute(text("SELECT pg_current_wal_insert_lsn()::text"))).scalar()
        )
    txs = [observation(i)[0] for i in range(100)]
    result = await site.executor.execute_batch(txs)
    assert all(o.applied for o in result.outcomes)
    assert result.commit_lsn is not None and result.commit_lsn > before
    async with site.engine.connect() as conn:
        after = LSN((await conn.execute(text("SELECT pg_current_wal_insert_lsn()::text"))).scalar())
    assert result.commit_lsn <= after
    assert await _count(site.engine, ExecutedObsUnit.id) == 100


async def test_lost_acknowledgement_is_skipped_by_the_ledger(site: Site) -> None:
    tx, _ = observation(1)
    await site.manager.buffer(tx)

    async def lost(*args: object, **kwargs: object) -> list[object]:
        raise ConnectionError("injected: the acknowledgement never reached the buffer")

    committed = site.manager.committed
    site.manager.committed = lost  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await site.processor.run_once()
    site.manager.committed = committed  # type: ignore[method-assign]
    successor = BackgroundProcessor(site.manager, site.executor, clock=site.clock)
    site.clock.advance(site.processor.lease_ttl + 1)
    assert await successor.run_once() == 1
    assert await _count(site.engine, RawDataPackage.id) == 1
    assert await _count(site.engine, ledger_table.c.transaction_id) == 1
    status = await site.manager.status(tx.transaction_id)
    assert status is not None and status.state is TransactionState.COMMITTED
    assert status.commit_lsn is not None


async def test_poison_in_a_batch_of_100(site: Site) -> None:
    txs = [observation(i)[0] for i in range(99)]
    poison = orphan_package(7)
    await site.manager.buffer_many([*txs[:42], poison, *txs[42:]])
    assert await site.processor.run_once() == 42  # the rest waits behind the poison
    assert await _count(site.engine, ExecutedObsUnit.id) == 42
    for _ in range(2):
        status = await site.manager.status(poison.transaction_id)
        assert status is not None and status.state is TransactionState.RETRYING
        assert await site.processor.run_once() == 0  # held by its backoff
        site.clock.advance(3600)
        assert await site.processor.run_once() == 0  # only the poison is tried
    status = await site.manager.status(poison.transaction_id)
    assert status is not None and status.state is TransactionState.FAILED
    assert status.attempts == 3
    assert await site.processor.run_once() == 57  # dead-lettered: the queue moves on
    (letter,) = await site.manager.backend.dead_letters.list()
    assert "ForeignKeyViolationError" in letter.reason or "foreign key" in letter.reason
    assert "raw_data_package" in letter.reason
    async with site.engine.begin() as conn:
        await conn.execute(
            ExecutedObsUnit.__table__.insert().values(
                id="missing-7", obs_unit_id=7, status="fixed", start_time=poison.created_at
            )
        )
    assert await site.manager.replay() == [poison.transaction_id]
    assert await site.processor.run_once() == 1
    assert await _count(site.engine, RawDataPackage.id) == 100


async def test_errors_are_classified_from_postgres(site: Site) -> None:
    first, _ = observation(1, name="same-name")
    second, _ = observation(2, name="same-name")
    result = await site.executor.execute_batch([first, second])
    assert result.outcomes[0].applied
    # A unique violation on a create is a conflict (insert_exists), not bad data.
    assert result.outcomes[1].conflicted
    assert result.outcomes[1].conflicts[0].kind == "insert_exists"
    async with site.engine.begin() as conn:
        await conn.execute(
            text(
                f'ALTER DATABASE "{make_url(site.url).database}" '
                "SET default_transaction_read_only = on"
            )
        )
    read_only = create_engine(site.url)
    try:
        executor = TransactionExecutor(read_only, site.executor.registry)
        with pytest.raises(Exception) as caught:
            await executor.execute_batch([observation(3)[0]])
        from ccat_buffering.errors import DatabaseUnavailableError

        assert isinstance(caught.value, DatabaseUnavailableError)  # a standby for now: an outage
    finally:
        await read_only.dispose()
        async with site.engine.begin() as conn:
            await conn.execute(text("SET default_transaction_read_only = off"))
            await conn.execute(
                text(
                    f'ALTER DATABASE "{make_url(site.url).database}" '
                    "SET default_transaction_read_only = off"
                )
            )


async def test_outage_mid_drain_pauses_counts_nothing_and_resumes(pg_url: str) -> None:
    target = make_url(pg_url)
    proxy = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    proxied = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    built = await _site(pg_url)
    engine = create_engine(proxied, pool_pre_ping=True)
    executor = TransactionExecutor(engine, built.executor.registry)
    processor = BackgroundProcessor(
        built.manager, executor, batch_size=50, clock=built.clock, outage_base_delay=1.0
    )
    try:
        txs = [observation(i)[0] for i in range(200)]
        await built.manager.buffer_many(txs)
        assert await processor.run_once() == 50
        await proxy.stop()  # the link goes down in the middle of the drain
        for _ in range(4):
            assert await processor.run_once() == 0
        health = await processor.health()
        assert health.state is ProcessorState.PAUSED
        assert health.cause is not None and "database unreachable" in health.cause
        assert (health.depth, health.in_flight, health.dead_letters) == (150, 0, 0)
        statuses = await built.manager.backend.status.get_many([t.transaction_id for t in txs])
        assert all(s is not None and s.attempts == 0 for s in statuses)
        assert processor.outage_delay() == 8.0
        await proxy.start()  # the link is back
        while await processor.run_once():
            pass
        assert processor.state is ProcessorState.RUNNING
        assert await _count(built.engine, ExecutedObsUnit.id) == 200
        stats = await built.manager.backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.dead_letters) == (0, 0, 0)
    finally:
        await proxy.stop()
        await engine.dispose()
        await built.engine.dispose()


async def test_a_deferred_constraint_at_commit_blames_its_own_transaction(site: Site) -> None:
    async with site.engine.begin() as conn:
        await conn.execute(
            text(
                "ALTER TABLE raw_data_package ALTER CONSTRAINT "
                "raw_data_package_executed_obs_unit_id_fkey DEFERRABLE INITIALLY DEFERRED"
            )
        )
    txs = [observation(i)[0] for i in range(10)]
    poison = orphan_package(3)
    result = await site.executor.execute_batch([*txs[:5], poison, *txs[5:]])
    kinds = [o.kind for o in result.outcomes]
    assert kinds[5] is FailureKind.DATA and "foreign key" in str(result.outcomes[5].error)
    assert all(o.applied for o in result.outcomes[:5])
    assert all(o.waiting for o in result.outcomes[6:])
    assert await _count(site.engine, ExecutedObsUnit.id) == 5


async def test_drain_beside_the_running_loop_applies_each_once(site: Site) -> None:
    import asyncio

    site.processor.poll_interval = 0.001
    site.processor.batch_size = 20
    txs = [observation(i)[0] for i in range(200)]
    await site.manager.buffer_many(txs)
    site.processor.start()
    await asyncio.sleep(0)
    assert await asyncio.wait_for(site.processor.drain(timeout=30), 60)
    await asyncio.wait_for(site.processor.stop(), 10)
    assert await _count(site.engine, ExecutedObsUnit.id) == 200
    statuses = await site.manager.backend.status.get_many([t.transaction_id for t in txs])
    assert all(s is not None and s.state is TransactionState.COMMITTED for s in statuses)
    stats = await site.manager.backend.buffer.stats()
    assert (stats.depth, stats.in_flight, stats.dead_letters) == (0, 0, 0)


async def test_a_missing_column_on_the_main_database_pauses_as_schema_lag(site: Site) -> None:
    txs = [observation(i)[0] for i in range(5)]
    await site.manager.buffer_many(txs)
    async with site.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE raw_data_package DROP COLUMN name"))
    for _ in range(5):  # more than max_attempts
        assert await site.processor.run_once() == 0
    health = await site.processor.health()
    assert health.state is ProcessorState.PAUSED
    assert health.cause is not None and "lacks part of the schema" in health.cause
    statuses = await site.manager.backend.status.get_many([t.transaction_id for t in txs])
    assert all(s is not None and s.attempts == 0 for s in statuses)
    assert health.dead_letters == 0
    async with site.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE raw_data_package ADD COLUMN name varchar(255)"))
    assert await site.processor.run_once() == 5
