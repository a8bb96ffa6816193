"""A main database behind a relay that adds delay and hangs: timeouts, leases, resumption.

The relay drops every byte while hung and keeps its connections open, as a
long-haul link does; nothing here relies on a reset. Timeouts are 1-3 s so
that the file runs in seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from pg import fresh_database
from sqlalchemy import func, literal_column, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.retry import RetryPolicy
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.demo.example import Base
from ccat_buffering.drain._link import LinkTimeouts
from ccat_buffering.drain.database import create_engine, ledger_table
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor, ProcessorState
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend

from support import ledger_count, make_schema, observation, start_worker, units_in_order

TIMEOUTS = LinkTimeouts(
    connect=1.5, statement=1.5, lock=1.0, idle_in_transaction=2.0, keepalive_idle=1.0
)


@dataclass
class LinkSite:
    relay: LoopbackRelay
    direct: AsyncEngine
    engine: AsyncEngine
    manager: TransactionManager
    processor: BackgroundProcessor


@pytest_asyncio.fixture(params=["asyncpg", "psycopg"])
async def link_site(request: pytest.FixtureRequest) -> AsyncIterator[LinkSite]:
    async with fresh_database() as url:
        target = make_url(url).set(drivername=f"postgresql+{request.param}")
        relay = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432, delay=0.005)
        await relay.start()
        proxied = target.set(host="127.0.0.1", port=relay.port)
        direct = create_engine(url)
        await make_schema(direct)
        registry = ModelRegistry.from_base(Base)
        await TransactionExecutor(direct, registry).create_ledger()
        engine = create_engine(proxied.render_as_string(hide_password=False), timeouts=TIMEOUTS)
        executor = TransactionExecutor(engine, registry, timeouts=TIMEOUTS)
        manager = TransactionManager(
            MemoryBackend(new_site_name()),
            registry=registry,
            retry_policy=RetryPolicy(rng=random.Random(5)),
        )
        processor = BackgroundProcessor(
            manager,
            executor,
            batch_size=20,
            lease_ttl=1.5,
            poll_interval=0.01,
            outage_base_delay=0.5,
            outage_max_delay=30.0,
            probe_interval=0.2,
        )
        try:
            yield LinkSite(relay, direct, engine, manager, processor)
        finally:
            await processor.stop()
            await relay.stop()
            await engine.dispose()
            await direct.dispose()


async def _until(condition: Callable[[], Any], seconds: float, what: str) -> float:
    began = time.monotonic()
    while not await condition():
        assert time.monotonic() - began < seconds, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


async def _hang_and_resume(site: LinkSite, when: Callable[[bytes, bool], bool]) -> None:
    txs = [observation(i)[0] for i in range(100)]
    await site.manager.buffer_many(txs)
    site.relay.hang_when = when
    site.processor.start()

    async def hung() -> bool:
        return site.relay.hung

    await _until(hung, 20, "the batch reached the point where the link hangs")

    async def paused() -> bool:
        health = await site.processor.health()
        return health.state is ProcessorState.PAUSED and "not answering" in (health.cause or "")

    waited = await _until(paused, TIMEOUTS.statement + 5, "outage reported")
    health = await site.processor.health()
    assert health.cause is not None and "main database not answering for" in health.cause
    assert waited <= TIMEOUTS.statement + 5
    # The lease is kept by this processor while the link hangs: no lease warning.
    await asyncio.sleep(site.processor.lease_ttl)
    lease = await site.manager.backend.lease.current()
    assert lease is not None and lease.holder == site.processor.holder
    health = await site.processor.health()
    assert health.state is ProcessorState.PAUSED and health.dead_letters == 0
    statuses = await site.manager.backend.status.get_many([t.transaction_id for t in txs])
    assert all(s is not None and s.attempts == 0 for s in statuses)

    site.relay.hang_when = None
    site.relay.answer()
    answered = time.monotonic()

    async def drained() -> bool:
        stats = await site.manager.backend.buffer.stats()
        return stats.depth == 0 and stats.in_flight == 0

    await _until(drained, 10 + TIMEOUTS.idle_in_transaction, "drained after the link answered")
    resumed_in = time.monotonic() - answered
    await site.processor.stop()
    units, ledger = await units_in_order(site.direct), await ledger_count(site.direct)
    assert sorted(units) == list(range(100)) and ledger == 100  # nothing lost, nothing twice
    assert list(units) == list(range(100))  # in buffer order
    stats = await site.manager.backend.buffer.stats()
    assert stats.dead_letters == 0
    statuses = await site.manager.backend.status.get_many([t.transaction_id for t in txs])
    assert all(s is not None and s.state is TransactionState.COMMITTED for s in statuses)
    assert resumed_in <= 10 + TIMEOUTS.idle_in_transaction


def _at(marker: bytes, upstream: bool, nth: int) -> Callable[[bytes, bool], bool]:
    """Hang at the ``nth`` chunk in that direction that carries ``marker``."""
    seen = [0]

    def when(data: bytes, to_target: bool) -> bool:
        if to_target is upstream and marker in data:
            seen[0] += 1
        return seen[0] == nth

    return when


async def test_a_hang_in_the_middle_of_a_batch(link_site: LinkSite) -> None:
    # The rows of the second batch's second table never reach the server: its
    # transaction stays open there until idle_in_transaction ends it.
    await _hang_and_resume(link_site, _at(b"pkg-25", True, 1))


async def test_a_hang_at_commit(link_site: LinkSite) -> None:
    # The server commits the second batch; its answer is lost. The ledger
    # makes the redelivery of that batch a no-op.
    await _hang_and_resume(link_site, _at(b"COMMIT\x00", False, 2))


async def test_a_stopped_worker_holding_a_transaction_does_not_block_the_next_holder() -> None:
    import os
    import signal

    from services import REDIS_URL, forget_site, redis_client
    from sqlalchemy import text

    from ccat_buffering_redis import RedisBackend

    probe = await redis_client()
    async with fresh_database() as url:
        target = make_url(url)
        relay = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432, delay=0.02)
        await relay.start()
        direct = create_engine(url, timeouts=TIMEOUTS)
        await make_schema(direct)
        registry = ModelRegistry.from_base(Base)
        await TransactionExecutor(direct, registry).create_ledger()
        backend = RedisBackend.from_url(REDIS_URL, site=new_site_name())
        manager = TransactionManager(backend, registry=registry)
        txs = [observation(i)[0] for i in range(300)]
        await manager.buffer_many(txs)
        proxied = target.set(host="127.0.0.1", port=relay.port)
        env = {
            **os.environ,
            "CCAT_BUFFERING_SITE_NAME": backend.site,
            "CCAT_BUFFERING_BACKEND_URL": REDIS_URL,
            "CCAT_BUFFERING_DATABASE_URL": proxied.render_as_string(hide_password=False),
            "CCAT_BUFFERING_PROCESSOR_LEASE": "1",
            "CCAT_BUFFERING_BATCH_SIZE": "10",
            "CCAT_BUFFERING_BATCH_SIZE_ADAPTIVE": "false",
            "CCAT_BUFFERING_POLL_INTERVAL": "0.01",
            "CCAT_BUFFERING_STATEMENT_TIMEOUT": "3",
            "CCAT_BUFFERING_LOCK_TIMEOUT": str(TIMEOUTS.lock),
            "CCAT_BUFFERING_IDLE_IN_TRANSACTION_TIMEOUT": str(TIMEOUTS.idle_in_transaction),
        }
        worker = start_worker(env)
        successor: BackgroundProcessor | None = None
        try:

            async def writing() -> bool:
                """Stop the worker; keep it stopped only if it holds a transaction that wrote."""
                os.kill(worker.pid, signal.SIGSTOP)
                async with direct.connect() as conn:
                    open_writes = (
                        await conn.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
                                "AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
                            ),
                            {"db": target.database},
                        )
                    ).scalar()
                if open_writes:
                    return True
                os.kill(worker.pid, signal.SIGCONT)
                return False

            await _until(writing, 30, "the worker was caught inside a database transaction")
            stopped_at = time.monotonic()
            executor = TransactionExecutor(direct, registry, timeouts=TIMEOUTS)
            successor = BackgroundProcessor(
                manager, executor, batch_size=50, lease_ttl=1.0, poll_interval=0.01
            )
            successor.start()

            async def drained() -> bool:
                stats = await backend.buffer.stats()
                return stats.depth == 0 and stats.in_flight == 0

            # the stalled session is ended by the server after the idle timeout;
            # the lease lapses after 1 s; the rest is a few batches on loopback
            await _until(drained, TIMEOUTS.idle_in_transaction + 10, "the next holder drained")
            assert time.monotonic() - stopped_at <= TIMEOUTS.idle_in_transaction + 10
            await successor.stop()
        finally:
            worker.kill()
            worker.wait(10)
            if successor is not None:
                await successor.stop()
            await relay.stop()
        units, ledger = await units_in_order(direct), await ledger_count(direct)
        assert list(units) == list(range(300)) and ledger == 300
        stats = await backend.buffer.stats()
        assert stats.dead_letters == 0
        await forget_site(probe, backend.keys.pattern())
        await probe.aclose()  # type: ignore[attr-defined]
        await backend.aclose()
        await direct.dispose()


async def test_the_kill_storm_through_a_50_ms_relay() -> None:
    """SIGKILLed workers over a 50 ms round trip: each transaction applied once, in order."""
    import os
    import signal

    from services import REDIS_URL, forget_site, redis_client
    from test_kill_storm import _transaction, _until_holding, finishing

    from ccat_buffering.demo.example import RawDataFile
    from ccat_buffering_redis import RedisBackend

    count, kills = 400, 8
    probe = await redis_client()
    async with fresh_database() as url:
        target = make_url(url)
        relay = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432, delay=0.025)
        await relay.start()
        direct = create_engine(url)
        await make_schema(direct)
        await TransactionExecutor(direct, ModelRegistry.from_base(Base)).create_ledger()
        backend = RedisBackend.from_url(REDIS_URL, site=new_site_name())
        manager = TransactionManager(backend)
        txs = [_transaction(i) for i in range(count)]
        await manager.buffer_many(txs)
        proxied = target.set(drivername="postgresql+psycopg", host="127.0.0.1", port=relay.port)
        env = {
            **os.environ,
            "CCAT_BUFFERING_SITE_NAME": backend.site,
            "CCAT_BUFFERING_BACKEND_URL": REDIS_URL,
            "CCAT_BUFFERING_DATABASE_URL": proxied.render_as_string(hide_password=False),
            "CCAT_BUFFERING_PROCESSOR_LEASE": "0.5",
            "CCAT_BUFFERING_BATCH_SIZE": "10",
            "CCAT_BUFFERING_BATCH_SIZE_ADAPTIVE": "false",
            "CCAT_BUFFERING_POLL_INTERVAL": "0.01",
        }
        rng = random.Random(20261202)
        workers = []
        try:
            for _ in range(kills):
                worker = start_worker(env)
                workers.append(worker)
                await _until_holding(backend, worker.pid)
                await asyncio.sleep(rng.uniform(0.02, 0.4))
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait(10)
            last = start_worker(finishing(env))
            workers.append(last)
            await _until_holding(backend, last.pid)

            async def drained() -> bool:
                stats = await backend.buffer.stats()
                return stats.depth == 0 and stats.in_flight == 0

            await _until(drained, 90, "the last worker drained the buffer")
            last.send_signal(signal.SIGTERM)
            assert last.wait(30) == 0
        finally:
            for process in workers:
                if process.poll() is None:
                    process.kill()
            await relay.stop()
        async with direct.connect() as conn:
            files = (
                (await conn.execute(select(RawDataFile.size_bytes).order_by(literal_column("id"))))
                .scalars()
                .all()
            )
            ledger = (await conn.execute(select(func.count()).select_from(ledger_table))).scalar()
        assert list(files) == list(range(count))  # each once, in buffer order
        assert ledger == count
        assert (await backend.buffer.stats()).dead_letters == 0
        await forget_site(probe, backend.keys.pattern())
        await probe.aclose()  # type: ignore[attr-defined]
        await backend.aclose()
        await direct.dispose()
