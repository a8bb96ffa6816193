"""Exactly once under crashes: a worker killed with SIGKILL again and again.

A real ``ccat-buffering worker`` process drains a Redis buffer into a fresh
PostgreSQL database and is killed at random moments, at least twenty times;
a last worker finishes. Every transaction must then be applied exactly once,
in order, with nothing left in flight or dead-lettered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import time

from pg import fresh_database
from services import REDIS_URL, forget_site, redis_client
from sqlalchemy import func, literal_column, select

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.demo._workload import add_observation, add_raw_files
from ccat_buffering.demo.example import Base, ExecutedObsUnit, RawDataFile
from ccat_buffering.drain.database import create_engine, ledger_table
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction, TransactionState
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_redis import RedisBackend

from support import make_schema, start_worker

TRANSACTIONS = 2000
KILLS = 20


def _transaction(i: int) -> Transaction:
    tx = TransactionBuilder("record_scan")
    _obs, package = add_observation(
        tx, i, name=f"pkg-{i}", start_time=dt.datetime(2026, 11, 28, tzinfo=dt.UTC), status="done"
    )
    # No unique constraint on paths: a second application would show as a second row.
    add_raw_files(tx, package, [(f"/scan/{i}", i)])
    return tx.build()


def finishing(env: dict[str, str]) -> dict[str, str]:
    """The storm's settings for the last worker, which is never killed: default batches.

    The small fixed batches are there so that a kill lands inside one; the last
    worker drains what the killed ones left (most of the buffer) in the default,
    adaptive batches, not five at a time.
    """
    return {k: v for k, v in env.items() if not k.startswith("CCAT_BUFFERING_BATCH_SIZE")}


async def _until_holding(backend: RedisBackend, pid: int) -> None:
    """Wait until the worker with ``pid`` holds the site's lease: it is draining."""
    deadline = time.monotonic() + 30
    while True:
        lease = await backend.lease.current()
        if lease is not None and f"-{pid}-" in lease.holder:
            return
        assert time.monotonic() < deadline, "the worker never took the lease"
        await asyncio.sleep(0.01)


async def test_random_kills_apply_everything_exactly_once_in_order() -> None:
    probe = await redis_client()
    async with fresh_database() as db_url:
        engine = create_engine(db_url)
        await make_schema(engine)
        await TransactionExecutor(engine, ModelRegistry.from_base(Base)).create_ledger()
        site = new_site_name()
        backend = RedisBackend.from_url(REDIS_URL, site=site)
        manager = TransactionManager(backend)
        txs = [_transaction(i) for i in range(TRANSACTIONS)]
        for start in range(0, TRANSACTIONS, 200):
            await manager.buffer_many(txs[start : start + 200])
        env = {
            **os.environ,
            "CCAT_BUFFERING_SITE_NAME": site,
            "CCAT_BUFFERING_BACKEND_URL": REDIS_URL,
            "CCAT_BUFFERING_DATABASE_URL": db_url,
            "CCAT_BUFFERING_PROCESSOR_LEASE": "0.5",
            "CCAT_BUFFERING_BATCH_SIZE": "5",
            # small fixed batches, so that most kills land in the middle of one
            "CCAT_BUFFERING_BATCH_SIZE_ADAPTIVE": "false",
            "CCAT_BUFFERING_POLL_INTERVAL": "0.01",
        }
        rng = random.Random(20261128)
        interrupted = 0
        try:
            for _ in range(KILLS):
                worker = start_worker(env)
                await _until_holding(backend, worker.pid)
                await asyncio.sleep(rng.uniform(0.02, 0.3))  # somewhere in its work
                interrupted += (await backend.buffer.stats()).in_flight > 0
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait(10)
            last = start_worker(finishing(env))
            deadline = time.monotonic() + 120
            await _until_holding(backend, last.pid)
            while True:
                stats = await backend.buffer.stats()
                if stats.depth == 0 and stats.in_flight == 0:
                    break
                assert time.monotonic() < deadline, stats
                await asyncio.sleep(0.1)
            last.send_signal(signal.SIGTERM)
            assert last.wait(30) == 0  # a graceful stop
            assert await backend.lease.current() is None  # and the lease given back
        finally:
            for process in (worker, last) if "last" in locals() else (worker,):
                if process.poll() is None:
                    process.kill()

        assert interrupted >= KILLS // 2, f"only {interrupted} kills hit work in flight"
        async with engine.connect() as conn:
            order = select(ExecutedObsUnit.obs_unit_id).order_by(ExecutedObsUnit.obs_unit_id)
            units = (await conn.execute(order)).scalars().all()
            per_path = (
                await conn.execute(
                    select(RawDataFile.path, func.count()).group_by(RawDataFile.path)
                )
            ).all()
            ledger = (await conn.execute(select(func.count()).select_from(ledger_table))).scalar()
            ctid_order = (
                (await conn.execute(select(RawDataFile.size_bytes).order_by(literal_column("id"))))
                .scalars()
                .all()
            )
        assert list(units) == list(range(TRANSACTIONS))
        assert len(per_path) == TRANSACTIONS and all(n == 1 for _, n in per_path)
        assert ledger == TRANSACTIONS
        assert list(ctid_order) == list(range(TRANSACTIONS))  # applied in buffer order
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.dead_letters) == (0, 0, 0)
        counts = await backend.status.counts()
        assert (
            counts[TransactionState.REPLICATED] + counts[TransactionState.COMMITTED] == TRANSACTIONS
        )
        await forget_site(probe, backend.keys.pattern())
        await probe.aclose()
        await backend.aclose()
        await engine.dispose()
