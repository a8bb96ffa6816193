"""LSN tracking and read-your-writes against a real streaming replica."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from servers import Replicated
from services import REDIS_URL, forget_site, redis_client, require_redis
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.confirm.replication import LSNReplicationChecker, ReplicationTracker
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor, ProcessorState
from ccat_buffering.read.reads import Reads
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend
from ccat_buffering_redis import RedisBackend

from support import make_schema, observation


@dataclass
class Pair:
    primary_url: str
    replica_url: str
    primary: AsyncEngine
    replica: AsyncEngine
    registry: ModelRegistry


@pytest_asyncio.fixture
async def pair(replicated: Replicated) -> AsyncIterator[Pair]:
    """A fresh database on the primary, its tables, and both ends' engines."""
    name = f"ccat_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(replicated.primary_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    primary_url = make_url(replicated.primary_url).set(database=name).render_as_string(False)
    replica_url = make_url(replicated.replica_url).set(database=name).render_as_string(False)
    primary = create_engine(primary_url)
    await make_schema(primary)
    registry = ModelRegistry.from_base(Base)
    await TransactionExecutor(primary, registry).create_ledger()
    replica = create_engine(replica_url)
    deadline = time.monotonic() + 30
    while True:  # the new database and its tables reach the replica
        try:
            async with replica.connect() as conn:
                await conn.execute(text("SELECT 1 FROM ccat_buffering_applied_transactions"))
            break
        except Exception:
            assert time.monotonic() < deadline, "the replica never showed the new database"
            await asyncio.sleep(0.05)
    yield Pair(primary_url, replica_url, primary, replica, registry)
    await _resume(replica)
    await primary.dispose()
    await replica.dispose()
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def _pause(replica: AsyncEngine) -> None:
    async with replica.connect() as conn:
        await conn.execute(text("SELECT pg_wal_replay_pause()"))
        await conn.commit()


async def _resume(replica: AsyncEngine) -> None:
    async with replica.connect() as conn:
        await conn.execute(text("SELECT pg_wal_replay_resume()"))
        await conn.commit()


async def _until(check: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_paused_replay_keeps_caches_until_the_replica_shows_the_commit(pair: Pair) -> None:
    client = await redis_client()
    backend = RedisBackend(client, site=new_site_name())
    manager = TransactionManager(backend, registry=pair.registry, cache_ttl=1.0, status_ttl=60)
    executor = TransactionExecutor(pair.primary, pair.registry)
    processor = BackgroundProcessor(manager, executor)
    tracker = ReplicationTracker(manager, LSNReplicationChecker(pair.replica), timeout=0.5)
    reads = Reads(backend.cache, pair.registry, pair.replica)
    await _pause(pair.replica)
    txs = [observation(i) for i in range(5)]
    await manager.buffer_many([tx for tx, _ in txs])
    assert await processor.run_once() == 5
    started = time.monotonic()
    while time.monotonic() - started < 3.0:  # three times the caches' original TTL
        report = await tracker.poll_once()
        assert (report.confirmed, report.pending) == (0, 5)
        for _, obs_id in txs:
            seen = await reads.get("ExecutedObsUnit", obs_id)
            assert seen is not None and seen["status"] == "running"
        await asyncio.sleep(0.1)
    assert report.lagging and report.lag_bytes is not None and report.lag_bytes > 0
    statuses = await backend.status.get_many([tx.transaction_id for tx, _ in txs])
    assert all(s is not None and s.state is TransactionState.COMMITTED for s in statuses)

    await _resume(pair.replica)

    async def replicated() -> bool:
        await tracker.poll_once()
        found = await backend.status.get_many([tx.transaction_id for tx, _ in txs])
        return all(s is not None and s.state is TransactionState.REPLICATED for s in found)

    await _until(replicated, "replicated after the replay resumed")
    keys = [k.decode() async for k in client.scan_iter(match=backend.keys.pattern(), count=1000)]
    for _, obs_id in txs:
        assert not any(obs_id in key for key in keys), keys
    for _, obs_id in txs:
        assert await backend.cache.get("ExecutedObsUnit", obs_id) is None
        seen = await reads.get("ExecutedObsUnit", obs_id)
        assert seen is not None and seen["status"] == "running"  # now from the replica alone
    await forget_site(client, backend.keys.pattern())
    await client.aclose()


async def test_a_restarted_tracker_confirms_what_was_pending(pair: Pair) -> None:
    manager = TransactionManager(MemoryBackend(new_site_name()), registry=pair.registry)
    processor = BackgroundProcessor(manager, TransactionExecutor(pair.primary, pair.registry))
    await _pause(pair.replica)
    tx, _ = observation(1)
    await manager.buffer(tx)
    await processor.run_once()
    first = ReplicationTracker(manager, LSNReplicationChecker(pair.replica))
    assert (await first.poll_once()).pending == 1
    first.stop()
    await _resume(pair.replica)
    second = ReplicationTracker(manager, LSNReplicationChecker(pair.replica))

    async def confirmed() -> bool:
        await second.poll_once()
        status = await manager.status(tx.transaction_id)
        return status is not None and status.state is TransactionState.REPLICATED

    await _until(confirmed, "the new tracker confirms")


async def test_one_replica_query_per_poll_whatever_is_pending(pair: Pair) -> None:
    manager = TransactionManager(MemoryBackend(new_site_name()), registry=pair.registry)
    processor = BackgroundProcessor(manager, TransactionExecutor(pair.primary, pair.registry))
    tracker = ReplicationTracker(manager, LSNReplicationChecker(pair.replica))
    statements: list[str] = []

    @event.listens_for(pair.replica.sync_engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    await _pause(pair.replica)
    per_poll = []
    for batch in (1, 60):
        await manager.buffer_many([observation(batch * 1000 + i)[0] for i in range(batch)])
        await processor.run_once()
        await tracker.poll_once()  # warm: the first connection's own queries
        statements.clear()
        report = await tracker.poll_once()
        per_poll.append((report.pending, len(statements)))
        await _resume(pair.replica)
        await _until(lambda: _all_confirmed(tracker), "confirmed")
        await _pause(pair.replica)
    assert per_poll == [(1, 1), (60, 1)]


async def _all_confirmed(tracker: ReplicationTracker) -> bool:
    return (await tracker.poll_once()).pending == 0


async def test_a_primary_is_not_a_standby(pair: Pair) -> None:
    state = await LSNReplicationChecker(pair.primary).poll()
    assert state.replay_lsn is None and not state.standby
    state = await LSNReplicationChecker(pair.replica).poll()
    assert state.replay_lsn is not None and state.standby


async def test_read_your_writes_while_the_main_database_is_unreachable(pair: Pair) -> None:
    target = make_url(pair.primary_url)
    proxy = LoopbackRelay("127.0.0.1", target.port or 5432)
    main = create_engine(target.set(port=proxy.port).render_as_string(False))
    manager = TransactionManager(MemoryBackend(new_site_name()), registry=pair.registry)
    processor = BackgroundProcessor(manager, TransactionExecutor(main, pair.registry))
    tracker = ReplicationTracker(manager, LSNReplicationChecker(pair.replica))
    reads = Reads(manager.backend.cache, pair.registry, pair.replica)
    try:
        tx, obs_id = observation(42)
        await manager.buffer(tx)  # the link is down: the proxy is not listening
        assert await processor.run_once() == 0 and processor.state is ProcessorState.PAUSED
        seen = await reads.get("ExecutedObsUnit", obs_id)
        assert seen is not None and seen["status"] == "running" and seen["obs_unit_id"] == 42
        finish = TransactionBuilder("finish_observation")
        finish.update(ExecutedObsUnit, obs_id, {"status": "finished"})
        await manager.buffer(finish.build())
        seen = await reads.get("ExecutedObsUnit", obs_id)
        assert seen is not None and seen["status"] == "finished"
        assert [r["id"] for r in await reads.list("ExecutedObsUnit", status="finished")] == [obs_id]

        await proxy.start()  # the link is back
        while await processor.run_once():
            pass
        await _until(lambda: _all_confirmed(tracker), "replicated")
        assert await manager.backend.cache.list("ExecutedObsUnit") == []
        after = await reads.get("ExecutedObsUnit", obs_id)
        assert after is not None
        assert {k: after[k] for k in ("id", "obs_unit_id", "status")} == {
            k: seen[k] for k in ("id", "obs_unit_id", "status")
        }
    finally:
        await proxy.stop()
        await main.dispose()


async def test_main_site_confirms_against_its_own_replica(pair: Pair) -> None:
    settings = BufferingSettings(
        site_name=new_site_name(),
        site_type="main",
        database_url=pair.primary_url,
        replica_url=pair.replica_url,
        replication_poll_interval=0.02,
    )
    async with BufferingCoordinator.from_settings(settings, registry=pair.registry) as site:
        tx, _ = observation(1)
        status = await site.submit(tx)
        assert status.state is TransactionState.COMMITTED and status.commit_lsn is not None

        async def confirmed() -> bool:
            got = await site.status(tx.transaction_id)
            return got is not None and got.state is TransactionState.REPLICATED

        await _until(confirmed, "the main site's write seen on its replica")
        health = await site.health()
        assert health.replication.standby is True


@pytest.mark.parametrize("schema", ["text", "uuid"])
async def test_simulate_through_a_cut_link_with_real_lsn_tracking(
    replicated: Replicated, schema: str
) -> None:
    from ccat_buffering.demo.simulation import simulate

    await require_redis()
    summary = await simulate(
        60,
        poison=1,
        backend_url=REDIS_URL,
        database_url=replicated.primary_url,
        replica_url=replicated.replica_url,
        schema=schema,  # type: ignore[arg-type]
    )
    assert summary.ok, summary
    client = await redis_client()
    await forget_site(client, f"site:{{{summary.site}}}:*")
    await client.aclose()  # type: ignore[attr-defined]
    assert summary.outage == "link to the database cut"
    assert summary.outage_pauses > 0 and summary.attempts_during_outage == 0
    assert (summary.lost, summary.applied_twice, summary.dead_lettered) == (0, 0, 1)
    assert summary.replicated == 120 and summary.visible_during_outage == summary.sampled
    assert summary.commit_to_visible_median is not None
