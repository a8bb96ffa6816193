"""BackgroundProcessor and TransactionExecutor on SQLite: order, ledger, outages, poison."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from sqlalchemy import func, literal_column, select

from ccat_buffering.demo.example import ExecutedObsUnit, RawDataPackage
from ccat_buffering.drain.database import ledger_table
from ccat_buffering.drain.processor import BackgroundProcessor, ProcessorState
from ccat_buffering.write.models import TransactionState

from support import (
    Site,
    ledger_count,
    memory_sqlite_site,
    observation,
    orphan_package,
    units_in_order,
)


async def _count(site: Site, column: object) -> int:
    async with site.engine.connect() as conn:
        return int((await conn.execute(select(func.count(column)))).scalar_one())  # type: ignore[arg-type]


async def test_drains_in_order_and_confirms(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        txs = [observation(i)[0] for i in range(250)]
        await site.manager.buffer_many(txs)
        applied = 0
        while applied < 250:
            done = await site.processor.run_once()
            assert done > 0
            applied += done
        assert await _count(site, ExecutedObsUnit.id) == 250
        async with site.engine.connect() as conn:
            # SQLite's rowid is the insertion order.
            query = select(ExecutedObsUnit.obs_unit_id).order_by(literal_column("rowid"))
            order = (await conn.execute(query)).scalars().all()
        assert list(order) == list(range(250))
        status = await site.manager.status(txs[-1].transaction_id)
        assert status is not None and status.state is TransactionState.COMMITTED
        assert status.committed_at is not None
        health = await site.processor.health()
        assert (health.processed, health.depth, health.in_flight) == (250, 0, 0)


async def test_the_tracker_confirms_what_its_processor_committed_without_reading_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccat_buffering.confirm.replication import ImmediateReplicationChecker, ReplicationTracker

    async with memory_sqlite_site(tmp_path) as site:
        tracker = ReplicationTracker(site.manager, ImmediateReplicationChecker())
        earlier = observation(0)[0]  # committed by another process (an earlier lease holder)
        await site.manager.buffer_many([earlier])
        await site.processor.run_once()
        site.manager.recent_commits.forget([earlier.transaction_id])
        txs = [observation(i)[0] for i in range(1, 4)]
        await site.manager.buffer_many(txs)
        await site.processor.run_once()
        read: list[str] = []
        get_many = site.backend.status.get_many

        async def counted(ids: list[str]) -> object:
            read.extend(ids)
            return await get_many(ids)

        monkeypatch.setattr(site.backend.status, "get_many", counted)
        report = await tracker.poll_once()
        assert report.confirmed == 4
        assert read == [earlier.transaction_id]  # only what this process did not write
        for tx in [earlier, *txs]:
            status = await site.manager.status(tx.transaction_id)
            assert status is not None and status.state is TransactionState.REPLICATED


async def test_lost_acknowledgement_is_skipped_by_the_ledger(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        tx, _obs_id = observation(1)
        await site.manager.buffer(tx)

        async def lost(*args: object, **kwargs: object) -> list[object]:
            raise ConnectionError("injected: the acknowledgement never reached the buffer")

        original = site.manager.committed
        site.manager.committed = lost  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await site.processor.run_once()
        site.manager.committed = original  # type: ignore[method-assign]
        assert await site.executor.is_applied(tx.transaction_id)
        # The claim is still in flight; a new processor recovers it and the ledger skips it.
        other = BackgroundProcessor(site.manager, site.executor, clock=site.clock)
        site.clock.advance(site.processor.lease_ttl + 1)
        assert await other.run_once() == 1
        assert await _count(site, ExecutedObsUnit.id) == 1
        assert await _count(site, ledger_table.c.transaction_id) == 1
        status = await site.manager.status(tx.transaction_id)
        assert status is not None and status.state is TransactionState.COMMITTED
        assert (await site.backend.buffer.stats()).in_flight == 0


async def test_redelivery_of_an_applied_transaction_changes_nothing(db_site: Site) -> None:
    tx, _ = observation(1)
    first = await db_site.executor.execute(tx)
    second = await db_site.executor.execute(tx)
    assert first.applied and not first.already_applied
    assert second.already_applied and not second.applied
    assert await _count(db_site, RawDataPackage.id) == 1


async def test_standby_while_another_holds_the_lease_then_takeover(db_site: Site) -> None:
    txs = [observation(i)[0] for i in range(3)]
    await db_site.manager.buffer_many(txs)
    assert await db_site.backend.lease.acquire("someone-else", 15)
    # The other holder claimed one and died before acknowledging it.
    await db_site.backend.buffer.claim(1, 600)
    assert await db_site.processor.run_once() == 0
    assert db_site.processor.state is ProcessorState.STANDBY
    db_site.clock.advance(16)
    assert await db_site.processor.run_once() == 3
    assert await _count(db_site, ExecutedObsUnit.id) == 3
    assert (await db_site.backend.buffer.stats()).in_flight == 0
    lease = await db_site.backend.lease.current()
    assert lease is not None and lease.holder == db_site.processor.holder


async def test_outage_pauses_without_attempts_and_resumes(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        txs = [observation(i)[0] for i in range(20)]
        await site.manager.buffer_many(txs)
        await site.engine.dispose()
        hidden = tmp_path.parent / f"{tmp_path.name}-unreachable"
        os.rename(tmp_path, hidden)
        try:
            for _ in range(4):
                assert await site.processor.run_once() == 0
            health = await site.processor.health()
            assert health.state is ProcessorState.PAUSED
            assert health.cause is not None and "database unreachable" in health.cause
            assert (health.depth, health.in_flight, health.dead_letters) == (20, 0, 0)
            assert site.processor.outage_delay() == 8.0  # 1, 2, 4, 8: capped exponential
            statuses = await site.backend.status.get_many([t.transaction_id for t in txs])
            assert all(s is not None and s.attempts == 0 for s in statuses)
        finally:
            os.rename(hidden, tmp_path)
        assert await site.processor.run_once() == 20
        assert site.processor.state is ProcessorState.RUNNING
        assert site.processor.outage_delay() == 0.0
        assert await _count(site, ExecutedObsUnit.id) == 20


async def test_poison_in_a_batch_rolls_back_alone_and_holds_what_follows(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path, max_attempts=3) as site:
        txs = [observation(i)[0] for i in range(99)]
        poison = orphan_package(0)
        batch = [*txs[:50], poison, *txs[50:]]
        await site.manager.buffer_many(batch)
        assert await site.processor.run_once() == 50  # the prefix; the rest waits behind it
        assert await _count(site, ExecutedObsUnit.id) == 50
        status = await site.manager.status(poison.transaction_id)
        assert status is not None and status.state is TransactionState.RETRYING
        behind = await site.manager.status(txs[50].transaction_id)
        assert behind is not None and behind.state is TransactionState.BUFFERED
        assert behind.attempts == 0
        stats = await site.backend.buffer.stats()
        assert (stats.depth, stats.in_flight) == (50, 0) and stats.held_until is not None
        assert await site.processor.run_once() == 0  # held by the poison's backoff
        for _ in range(2):
            site.clock.advance(3600)
            assert await site.processor.run_once() == 0  # only the poison is tried
            assert await _count(site, ExecutedObsUnit.id) == 50
        status = await site.manager.status(poison.transaction_id)
        assert status is not None and status.state is TransactionState.FAILED
        assert status.attempts == 3
        assert await site.processor.run_once() == 49  # dead-lettered: the queue moves on
        assert await units_in_order(site.engine) == list(range(99))
        (letter,) = await site.backend.dead_letters.list()
        assert "FOREIGN KEY constraint failed" in letter.reason
        # Fix the data, replay, and it applies.
        fix = observation(1000)[0]
        async with site.engine.begin() as conn:
            await conn.execute(
                ExecutedObsUnit.__table__.insert().values(
                    id="missing-0",
                    obs_unit_id=0,
                    status="x",
                    start_time=fix.created_at,
                )
            )
        assert await site.manager.replay() == [poison.transaction_id]
        assert await site.processor.run_once() == 1
        status = await site.manager.status(poison.transaction_id)
        assert status is not None and status.state is TransactionState.COMMITTED
        assert await _count(site, RawDataPackage.id) == 100


async def test_stop_finishes_and_releases_the_lease(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        txs = [observation(i)[0] for i in range(30)]
        await site.manager.buffer_many(txs)
        processor = BackgroundProcessor(site.manager, site.executor, poll_interval=0.01)
        processor.start()
        deadline = asyncio.get_running_loop().time() + 10
        while (
            await site.backend.buffer.stats()
        ).depth and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await processor.stop()
        assert processor.state is ProcessorState.STOPPED
        assert await site.backend.lease.current() is None
        assert await _count(site, ExecutedObsUnit.id) == 30
        stats = await site.backend.buffer.stats()
        assert (stats.depth, stats.in_flight) == (0, 0)


async def test_a_missing_ledger_pauses_instead_of_blaming_transactions(db_site: Site) -> None:
    from sqlalchemy import text

    tx, _ = observation(1)
    await db_site.manager.buffer(tx)
    async with db_site.engine.begin() as conn:
        await conn.execute(text("DROP TABLE ccat_buffering_applied_transactions"))
    assert await db_site.processor.run_once() == 0
    health = await db_site.processor.health()
    assert health.state is ProcessorState.PAUSED
    assert health.cause is not None and "ccat-buffering db init" in health.cause
    status = await db_site.manager.status(tx.transaction_id)
    assert status is not None and status.attempts == 0 and health.dead_letters == 0
    await db_site.executor.create_ledger()
    assert await db_site.processor.run_once() == 1


async def test_an_unreachable_buffer_pauses_the_loop_which_carries_on(tmp_path: Path) -> None:
    from ccat_buffering.errors import BackendUnavailableError

    async with memory_sqlite_site(tmp_path) as site:
        await site.manager.buffer_many([observation(i)[0] for i in range(5)])
        claim = site.backend.buffer.claim
        failing = {"left": 3}

        async def flaky(count: int, lease_seconds: float):  # type: ignore[no-untyped-def]
            if failing["left"]:
                failing["left"] -= 1
                raise BackendUnavailableError("redis at 127.0.0.1:6379 cannot be reached: injected")
            return await claim(count, lease_seconds)

        site.backend.buffer.claim = flaky  # type: ignore[method-assign]
        processor = BackgroundProcessor(
            site.manager, site.executor, poll_interval=0.01, outage_base_delay=0.01
        )
        processor.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (await site.backend.buffer.stats()).depth and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await processor.stop()
        assert failing["left"] == 0 and processor.counters.outages >= 3
        assert await _count(site, ExecutedObsUnit.id) == 5


async def test_a_transaction_buffered_twice_applies_once_and_settles_both(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path, max_attempts=1) as site:
        tx, _ = observation(1)
        other, _ = observation(2)
        await site.manager.buffer_many([tx, tx, other])  # a resubmission after a lost reply
        assert await site.processor.run_once() == 3
        assert await _count(site, ExecutedObsUnit.id) == 2
        stats = await site.backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.dead_letters) == (0, 0, 0)
        status = await site.manager.status(tx.transaction_id)
        assert status is not None and status.state is TransactionState.COMMITTED


async def test_a_cycle_that_broke_off_is_recovered_before_the_next_claim(tmp_path: Path) -> None:
    from ccat_buffering.errors import BackendUnavailableError

    async with memory_sqlite_site(tmp_path) as site:
        txs = [observation(i)[0] for i in range(4)]
        await site.manager.buffer_many(txs)
        committed = site.manager.committed

        async def lost(*args: object, **kwargs: object) -> list[object]:
            raise BackendUnavailableError("injected: the reply to the acknowledgement was lost")

        site.processor.batch_size = 2
        site.manager.committed = lost  # type: ignore[method-assign]
        with pytest.raises(BackendUnavailableError):
            await site.processor.run_once()
        site.manager.committed = committed  # type: ignore[method-assign]
        assert (await site.backend.buffer.stats()).in_flight == 2
        # The same holder, next cycle: its stranded claims come back first, in order.
        while await site.processor.run_once():
            pass
        async with site.engine.connect() as conn:
            query = select(ExecutedObsUnit.obs_unit_id).order_by(literal_column("rowid"))
            assert list((await conn.execute(query)).scalars()) == [0, 1, 2, 3]
        assert (await site.backend.buffer.stats()).in_flight == 0


async def test_a_processor_that_lost_the_lease_does_not_pause_anothers_claims(
    tmp_path: Path,
) -> None:
    from ccat_buffering.errors import DatabaseUnavailableError

    async with memory_sqlite_site(tmp_path) as site:
        tx, _ = observation(1)
        await site.manager.buffer(tx)
        execute = site.executor.execute_batch

        async def hang_then_fail(transactions):  # type: ignore[no-untyped-def]
            # While this processor hangs, its lease lapses and another drains the site.
            site.clock.advance(site.processor.lease_ttl + 1)
            other = BackgroundProcessor(site.manager, site.executor, clock=site.clock)
            site.executor.execute_batch = execute  # type: ignore[method-assign]
            assert await other.run_once() == 1
            raise DatabaseUnavailableError("injected: the connection finally broke")

        site.executor.execute_batch = hang_then_fail  # type: ignore[method-assign]
        assert await site.processor.run_once() == 0
        assert site.processor.state is ProcessorState.STANDBY
        status = await site.manager.status(tx.transaction_id)
        assert status is not None and status.state is TransactionState.COMMITTED


async def test_start_then_stop_with_no_await_between_them_returns(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        site.processor.start()
        await asyncio.wait_for(site.processor.stop(), 5)
        assert site.processor.state is ProcessorState.STOPPED
        assert await site.backend.lease.current() is None
        # and the processor can run again afterwards
        site.processor.start()
        await asyncio.sleep(0)
        await asyncio.wait_for(site.processor.stop(), 5)


async def test_a_second_loop_of_one_processor_is_refused(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        site.processor.start()
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already running"):
            await site.processor.run()
        await asyncio.wait_for(site.processor.stop(), 5)


async def test_drain_beside_the_background_loop_applies_each_once(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        site.processor.poll_interval = 0.001
        txs = [observation(i)[0] for i in range(300)]
        await site.manager.buffer_many(txs)
        site.processor.start()
        await asyncio.sleep(0)
        assert await site.processor.drain(timeout=30)
        await asyncio.wait_for(site.processor.stop(), 5)
        assert await _count(site, ExecutedObsUnit.id) == 300
        statuses = await site.backend.status.get_many([t.transaction_id for t in txs])
        assert all(s is not None and s.state is TransactionState.COMMITTED for s in statuses)
        health = await site.processor.health()
        assert (health.dead_letters, health.dead_lettered, health.retried) == (0, 0, 0)


async def _wait_processed(site: Site, count: int, seconds: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while site.processor.counters.processed < count:
        assert asyncio.get_running_loop().time() < deadline, site.processor.counters
        await asyncio.sleep(0.005)


async def _buffered_for_the_loop(site: Site, batch_size: int, n: int) -> list[str]:
    """Buffer ``n`` observations for a prefetching loop of ``batch_size``; their ids."""
    site.processor.poll_interval, site.processor.batch_size = 0.001, batch_size
    site.processor.prefetch = True
    txs = [observation(i)[0] for i in range(n)]
    await site.manager.buffer_many(txs)
    return [t.transaction_id for t in txs]


async def _all_committed(site: Site, ids: list[str]) -> bool:
    statuses = await site.backend.status.get_many(ids)
    return all(s is not None and s.state is TransactionState.COMMITTED for s in statuses)


async def test_the_loop_settles_a_batch_behind_the_next_and_all_of_it_by_stop(
    tmp_path: Path,
) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        ids = await _buffered_for_the_loop(site, 7, 60)
        site.processor.start()
        await _wait_processed(site, 60)
        await asyncio.wait_for(site.processor.stop(), 5)
        stats = await site.backend.buffer.stats()
        assert (stats.depth, stats.in_flight) == (0, 0)
        assert await _all_committed(site, ids)
        assert await units_in_order(site.engine) == list(range(60))
        assert await ledger_count(site.engine) == 60


async def test_the_loop_settles_a_batch_at_once_when_the_next_cycle_sends_none(
    tmp_path: Path,
) -> None:
    """A batch's settling waits for the next batch to be sent, never for a lease regained."""
    async with memory_sqlite_site(tmp_path) as site:
        ids = await _buffered_for_the_loop(site, 10, 5)
        site.processor._overlap = True  # as the loop runs its cycles
        assert await site.processor.run_once() == 5
        assert not await _all_committed(site, ids)  # put off until the next batch is sent
        # The lease lapses and another processor takes it: the next cycle sends nothing.
        site.clock.advance(site.processor.lease_ttl + 1)
        assert await site.backend.lease.acquire("another", site.processor.lease_ttl)
        assert await site.processor.run_once() == 0
        assert site.processor.state is ProcessorState.STANDBY
        deadline = asyncio.get_running_loop().time() + 5
        while not await _all_committed(site, ids):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.005)
        assert (await site.backend.buffer.stats()).in_flight == 0


async def test_a_settling_that_fails_behind_the_next_batch_loses_nothing(
    tmp_path: Path,
) -> None:
    from ccat_buffering.errors import BackendUnavailableError

    async with memory_sqlite_site(tmp_path) as site:
        ids = await _buffered_for_the_loop(site, 5, 40)
        committed = site.manager.committed
        calls = 0

        async def lost_once(*args: object, **kwargs: object) -> object:
            nonlocal calls
            calls += 1
            if calls == 2:  # settling the second batch, while the third is in flight
                raise BackendUnavailableError("injected: the buffer went away mid-settle")
            return await committed(*args, **kwargs)  # type: ignore[arg-type]

        site.manager.committed = lost_once  # type: ignore[method-assign]
        site.processor.start()
        deadline = asyncio.get_running_loop().time() + 30
        while not await _all_committed(site, ids):
            assert asyncio.get_running_loop().time() < deadline, site.processor.counters
            await asyncio.sleep(0.005)
        await asyncio.wait_for(site.processor.stop(), 5)
        assert calls > 2
        assert site.processor.counters.outages >= 1
        stats = await site.backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.dead_letters) == (0, 0, 0)
        assert sorted(await units_in_order(site.engine)) == list(range(40))  # each once
        assert await ledger_count(site.engine) == 40


async def test_a_missing_table_of_the_schema_pauses_as_schema_lag(tmp_path: Path) -> None:
    from sqlalchemy import text

    from ccat_buffering.demo.example import Base

    async with memory_sqlite_site(tmp_path) as site:
        txs = [observation(i)[0] for i in range(5)]
        await site.manager.buffer_many(txs)
        async with site.engine.begin() as conn:
            await conn.execute(text("DROP TABLE raw_data_package"))
        for _ in range(5):  # more than max_attempts: still nothing is blamed
            assert await site.processor.run_once() == 0
        health = await site.processor.health()
        assert health.state is ProcessorState.PAUSED
        assert health.cause is not None and "lacks part of the schema" in health.cause
        assert "deploy the migration" in health.cause
        statuses = await site.backend.status.get_many([t.transaction_id for t in txs])
        assert all(s is not None and s.attempts == 0 for s in statuses)
        assert health.dead_letters == 0
        async with site.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        assert await site.processor.run_once() == 5


async def test_a_prefetched_batch_waits_behind_a_retried_transaction(tmp_path: Path) -> None:
    """With prefetch, nothing after a transaction being retried applies before it."""
    from sqlalchemy import text

    async with memory_sqlite_site(tmp_path) as site:
        site.processor.prefetch = True
        site.processor.batch_size = 10
        first = [observation(i)[0] for i in range(5)]
        # a package whose obs unit is created only when the fix below runs
        late = orphan_package(5)
        rest = [observation(i)[0] for i in range(6, 30)]
        await site.manager.buffer_many([*first, late, *rest])
        assert await site.processor.run_once() == 5  # batch 1: what precedes the orphan
        # the rest of batch 1 and the prefetched batch went back behind the retried
        # orphan: nothing after it ran
        stats = await site.backend.buffer.stats()
        assert (stats.depth, stats.in_flight) == (25, 0)
        assert await _count(site, ExecutedObsUnit.id) == 5
        async with site.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO executed_obs_unit (id, obs_unit_id, status, start_time) "
                    "VALUES ('missing-5', 5, 'x', '2026-11-28 00:00:00')"
                )
            )
        site.clock.advance(3600)  # past the retry hold
        while await site.processor.run_once():
            pass
        async with site.engine.connect() as conn:
            names = (
                (await conn.execute(text("SELECT name FROM raw_data_package ORDER BY rowid")))
                .scalars()
                .all()
            )
        assert names == [
            *(f"pkg-{i}" for i in range(5)),
            "orphan-5",
            *(f"pkg-{i}" for i in range(6, 30)),
        ]


async def test_a_prefetched_batch_goes_back_behind_a_paused_one(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        site.processor.prefetch = True
        site.processor.batch_size = 10
        txs = [observation(i)[0] for i in range(40)]
        await site.manager.buffer_many(txs)
        assert await site.processor.run_once() == 10  # and batch 2 is prefetched
        assert (await site.backend.buffer.stats()).in_flight == 10
        await site.engine.dispose()
        hidden = tmp_path.parent / f"{tmp_path.name}-unreachable"
        os.rename(tmp_path, hidden)
        try:
            assert await site.processor.run_once() == 0  # batch 2 pauses, 3 goes back first
            stats = await site.backend.buffer.stats()
            assert (stats.depth, stats.in_flight) == (30, 0)
            statuses = await site.backend.status.get_many([t.transaction_id for t in txs])
            assert all(s is not None and s.attempts == 0 for s in statuses)
        finally:
            os.rename(hidden, tmp_path)
        while await site.processor.run_once():
            pass
        async with site.engine.connect() as conn:
            query = select(ExecutedObsUnit.obs_unit_id).order_by(literal_column("rowid"))
            order = (await conn.execute(query)).scalars().all()
        assert list(order) == list(range(40))


def test_the_batch_sizer_follows_the_round_trip() -> None:
    from ccat_buffering.drain._sizing import BatchSizer

    def sizer() -> BatchSizer:
        return BatchSizer(start=100, minimum=10, maximum=2000, max_bytes=8 << 20, max_seconds=10.0)

    loopback, far = sizer(), sizer()
    loopback.observe_rtt(0.0002)
    far.observe_rtt(0.2)
    for _ in range(6):  # 0.2 ms of work per transaction, plus the round trips
        loopback.observe(loopback.size, 2 * 0.0002 + loopback.size * 0.0002, loopback.size * 700)
        far.observe(far.size, 2 * 0.2 + far.size * 0.0002, far.size * 700)
    assert loopback.size < 1500  # about 200 ms of work
    assert far.size == 2000  # the round trips would dominate anything smaller
    tight = BatchSizer(start=100, minimum=10, maximum=2000, max_bytes=70_000, max_seconds=10.0)
    tight.observe_rtt(0.2)
    tight.observe(100, 0.42, 100 * 700)
    assert tight.size == 100  # 70 kB of payload at 700 bytes each


@pytest.mark.parametrize(
    ("driver", "per_batch_trips", "per_transaction_trips"),
    [
        ("psycopg pipeline", 1, 0),
        ("asyncpg, round trips per batch", 12, 0),
        ("asyncpg, round trips per transaction", 5, 6),
        ("sqlite", 0, 0),
    ],
)
@pytest.mark.parametrize("rtt", [0.04, 0.2])
def test_the_batch_sizer_never_starves_a_driver_on_a_slow_link(
    driver: str, per_batch_trips: int, per_transaction_trips: int, rtt: float
) -> None:
    """Round trips paid per statement look like per-transaction cost: no reason to shrink."""
    from ccat_buffering.drain._sizing import BatchSizer

    link = 0.0 if driver == "sqlite" else rtt

    def seconds(
        n: int,
    ) -> float:  # a batch of n on this driver: its round trips, 0.1 ms of CPU each
        return (per_batch_trips + n * per_transaction_trips) * link + n * 0.0001

    sizer = BatchSizer(start=100, minimum=10, maximum=2000, max_bytes=8 << 20, max_seconds=10.0)
    sizer.observe_rtt(link)
    sizes = []
    for _ in range(12):
        sizes.append(sizer.size)
        sizer.observe(sizer.size, seconds(sizer.size), sizer.size * 700)
    rates = [n / seconds(n) for n in sizes]
    assert min(rates) >= 0.999 * 100 / seconds(100), (driver, sizes)
    if per_batch_trips >= 12:
        # Many round trips per batch, none per transaction: worth growing past the start.
        assert sizer.size / seconds(sizer.size) > 2 * 100 / seconds(100), (driver, sizes)


async def test_the_worker_collects_no_young_generation_inside_its_batches(tmp_path: Path) -> None:
    """Below the threshold settle_heap sets for a batch size, a batch's objects are never walked.

    They all live until the batch is settled, so a young collection inside a
    batch finds nothing to free; the threshold for the worker's largest batch
    is above what a drain of such batches keeps alive (the interpreter's
    10,000 is not: it collects several times per batch).
    """
    import gc

    from ccat_buffering.drain._heap import settle_heap, young_threshold

    async def young_collections(largest_batch: int) -> int:
        (tmp_path / str(largest_batch)).mkdir()
        async with memory_sqlite_site(tmp_path / str(largest_batch)) as site:
            await site.manager.buffer_many([observation(i)[0] for i in range(3000)])
            processor = BackgroundProcessor(site.manager, site.executor, batch_size=1000)
            counted = [0]

            def count(phase: str, info: dict[str, int]) -> None:
                counted[0] += phase == "start" and info["generation"] == 0

            thresholds = gc.get_threshold()
            settle_heap(largest_batch)
            gc.callbacks.append(count)
            try:
                applied = 0
                while applied < 3000:
                    done = await processor.run_once()
                    assert done > 0
                    applied += done
            finally:
                gc.callbacks.remove(count)
                gc.unfreeze()
                gc.set_threshold(*thresholds)
            return counted[0]

    assert young_threshold(100) == 10_000 < young_threshold(1000) < young_threshold(2000)
    assert await young_collections(100) >= 3  # the old threshold: batches walked over and over
    assert await young_collections(1000) <= 1


def test_the_worker_heap_is_frozen_and_collected_less_often() -> None:
    import subprocess
    import sys

    script = (
        "import gc; from ccat_buffering.drain._heap import settle_heap, YOUNG_THRESHOLD\n"
        "before = gc.get_freeze_count(); settle_heap()\n"
        "assert gc.get_freeze_count() > before > -1, gc.get_freeze_count()\n"
        "assert gc.get_threshold()[0] == YOUNG_THRESHOLD > 700, gc.get_threshold()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
