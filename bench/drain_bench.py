"""Draining into PostgreSQL: batches with the ledger against the origin's one-at-a-time shape.

Both sides run end to end in the same process against the same PostgreSQL and
the same buffer (Redis when it answers, else the memory backend): claim ->
execute -> commit -> LSN -> ack -> status. The baseline is the origin's
processor shape, one claimed transaction per database transaction, commit and
LSN query, without a ledger; ours claims 100 and applies them with a savepoint
each in one database transaction, with the exactly-once ledger on (and, to
show its cost, off).

Run: ``python bench/drain_bench.py [--transactions N]`` (``make bench`` runs it).
Environment: ``CCAT_TEST_POSTGRES_URL``, ``CCAT_TEST_REDIS_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import time
import uuid

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from ccat_buffering.builder import TransactionBuilder
from ccat_buffering.database import create_engine
from ccat_buffering.demo._workload import add_observation, add_raw_files
from ccat_buffering.demo.example import Base
from ccat_buffering.executor import TransactionExecutor
from ccat_buffering.manager import TransactionManager
from ccat_buffering.models import Transaction
from ccat_buffering.processor import BackgroundProcessor
from ccat_buffering.protocols import Backend
from ccat_buffering.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend

POSTGRES_URL = os.environ.get(
    "CCAT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CCAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def transactions(n: int, run: str) -> list[Transaction]:
    """``n`` realistic transactions: an observation, its package and two files."""
    out = []
    for i in range(n):
        tx = TransactionBuilder("record_scan")
        _obs, package = add_observation(
            tx, i, name=f"{run}-{i}", start_time=dt.datetime.now(dt.UTC), status="done"
        )
        add_raw_files(tx, package, [(f"/{run}/{i}/{k}", k) for k in range(2)])
        out.append(tx.build())
    return out


async def _backend(site: str) -> tuple[Backend, str]:
    try:
        from ccat_buffering_redis import RedisBackend

        backend = RedisBackend.from_url(REDIS_URL, site=site)
        await backend.buffer.stats()
        return backend, "redis"
    except Exception:
        return MemoryBackend(site), "memory"


async def drain_rate(db_url: str, n: int, batch_size: int, ledger: bool) -> tuple[float, str]:
    """Transactions per second drained end to end, and which buffer was used."""
    engine = create_engine(db_url)
    registry = ModelRegistry.from_base(Base)
    executor = TransactionExecutor(engine, registry, ledger=ledger)
    backend, kind = await _backend(f"bench-{uuid.uuid4().hex[:8]}")
    manager = TransactionManager(backend, registry=registry)
    txs = transactions(n, uuid.uuid4().hex[:8])
    for start in range(0, n, 500):
        await manager.buffer_many(txs[start : start + 500])
    processor = BackgroundProcessor(manager, executor, batch_size=batch_size)
    rate = await drained_per_second(processor, n)
    await close_backend(backend)
    await engine.dispose()
    return rate, kind


async def drained_per_second(processor: BackgroundProcessor, n: int) -> float:
    """Run batches until ``n`` are applied; transactions per second."""
    began = time.perf_counter()
    done = 0
    while done < n:
        done += await processor.run_once()
    return n / (time.perf_counter() - began)


async def close_backend(backend: Backend) -> None:
    """Close a benchmark's backend, leaving nothing of its site behind in Redis."""
    client = getattr(backend, "client", None)
    if client is not None:
        keys = [k async for k in client.scan_iter(match=backend.keys.pattern())]  # type: ignore[attr-defined]
        for start in range(0, len(keys), 500):
            await client.unlink(*keys[start : start + 500])
    await backend.aclose()


async def main(n: int) -> list[tuple[str, str, str, str]]:
    """Measure and print the drain table; return its rows."""
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"ccat_bench_{uuid.uuid4().hex[:8]}"
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        engine = create_engine(db_url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await TransactionExecutor(engine, ModelRegistry.from_base(Base)).create_ledger()
        await engine.dispose()
        baseline, kind = await drain_rate(db_url, max(n // 10, 200), 1, ledger=False)
        batched, _ = await drain_rate(db_url, n, 100, ledger=True)
        no_ledger, _ = await drain_rate(db_url, n, 100, ledger=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
    rows = [
        ("origin shape: 1 per commit, no ledger", f"{baseline:,.0f}/s", "1.00x", ""),
        ("batch 100, ledger on", f"{batched:,.0f}/s", f"{batched / baseline:.1f}x", ">= 10x"),
        ("batch 100, ledger off", f"{no_ledger:,.0f}/s", f"{no_ledger / baseline:.1f}x", ""),
    ]
    baseline_n = max(n // 10, 200)
    print(f"drain into PostgreSQL, buffer on {kind}, {n} transactions (baseline on {baseline_n})")
    header = ("drain", "rate", "vs origin", "goal")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=3000)
    asyncio.run(main(parser.parse_args().transactions))
