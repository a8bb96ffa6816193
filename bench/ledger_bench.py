"""The ledger's life: its size at a steady rate with pruning, and the drain beside a big one.

Two measurements on PostgreSQL, each against a baseline of the same run:

* **steady size**: simulated hours at a steady rate (10 tx/s by default),
  each hour's transactions written to the ledger as the drain writes them
  (one multi-row INSERT per batch of 100, the site and the transaction's
  creation time in each row), then the worker's pruning run with a retention
  of ``--retention-hours``; the table's size (heap and indexes,
  ``pg_total_relation_size``) after each hour. ``VACUUM`` (not ``FULL``)
  stands in for autovacuum after each run. Without pruning the size grows
  with every hour (printed beside it); with it, it stops growing once the
  horizon is passed.
* **drain beside a big ledger**: the processor (psycopg pipeline, batch
  ``--batch``) draining ``--transactions`` through a delay relay of
  ``--rtt`` ms, into a database whose ledger was filled with ``--rows`` rows
  and then pruned down to the retention (the state a year of pruning leaves),
  against the same drain into a fresh ledger.

Run: ``python bench/ledger_bench.py [--rows 10000000] [--rtt 200]``.
Environment: ``CCAT_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from drain_bench import POSTGRES_URL, drained_per_second, transactions
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.demo.example import Base
from ccat_buffering.drain.database import (
    LEDGER_TABLE_NAME,
    create_engine,
    create_ledger,
    ledger_table,
)
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.ledger_pruning import prune_ledger
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend

SITE = "bench-site"


@asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A fresh database with the example schema and the ledger; dropped afterwards."""
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"ccat_bench_{uuid.uuid4().hex[:8]}"
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name)
    try:
        engine = create_engine(url.render_as_string(hide_password=False))
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await create_ledger(engine)
        await engine.dispose()
        yield url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def ledger_bytes(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = text(f"SELECT pg_total_relation_size('{LEDGER_TABLE_NAME}')")
        return int((await conn.execute(query)).scalar_one())


async def vacuum(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("SET statement_timeout = 0"))  # a big table's VACUUM
        await conn.execute(text(f"VACUUM {LEDGER_TABLE_NAME}"))


async def write_hour(engine: AsyncEngine, start: dt.datetime, rate: float) -> None:
    """One simulated hour of ledger rows at ``rate`` tx/s, in batches of 100."""
    n = int(rate * 3600)
    rows = [
        {
            "transaction_id": str(uuid.uuid4()),
            "endpoint": "record_scan",
            "applied_at": start + dt.timedelta(seconds=i / rate),
            "site": SITE,
            "created_at": start + dt.timedelta(seconds=i / rate),
        }
        for i in range(n)
    ]
    for first in range(0, n, 100):
        async with engine.begin() as conn:
            await conn.execute(ledger_table.insert(), rows[first : first + 100])


async def steady_size(hours: int, rate: float, retention_hours: float) -> None:
    print(f"ledger size at {rate:g} tx/s, retention {retention_hours:g} h (simulated hours)")
    print("hour  rows/hour  pruned   size with pruning  size without")
    async with database() as pruned_url, database() as kept_url:
        pruned, kept = create_engine(pruned_url), create_engine(kept_url)
        start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        for hour in range(1, hours + 1):
            moment = start + dt.timedelta(hours=hour - 1)
            await write_hour(pruned, moment, rate)
            await write_hour(kept, moment, rate)
            now = start + dt.timedelta(hours=hour)
            horizon = now - dt.timedelta(hours=retention_hours)
            report = await prune_ledger(pruned, SITE, horizon, batch_size=5000)
            await vacuum(pruned)
            await vacuum(kept)
            with_pruning, without = await ledger_bytes(pruned), await ledger_bytes(kept)
            print(
                f"{hour:>4}  {int(rate * 3600):>9}  {report.rows:>6}  "
                f"{with_pruning / 2**20:>14.2f} MiB  {without / 2**20:>9.2f} MiB"
            )
        await pruned.dispose()
        await kept.dispose()


async def fill_and_prune(url: str, rows: int, keep: int) -> float:
    """``rows`` ledger rows of the site, pruned down to the newest ``keep``; seconds taken."""
    engine = create_engine(url)
    began = time.perf_counter()
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for first in range(0, rows, 200_000):
            await conn.execute(
                text(
                    f"INSERT INTO {LEDGER_TABLE_NAME} SELECT gen_random_uuid()::text, 'fill', "
                    ":old + g * interval '1 second', :site, :old + g * interval '1 second' "
                    "FROM generate_series(:a, :b) AS g"
                ).bindparams(old=old, site=SITE, a=first, b=min(first + 200_000, rows) - 1)
            )
    filled = time.perf_counter() - began
    horizon = old + dt.timedelta(seconds=rows - keep)
    before = await ledger_bytes(engine)
    report = await prune_ledger(engine, SITE, horizon, batch_size=5000)
    print(
        f"filled {rows:,} rows ({before / 2**20:,.0f} MiB) in {filled:.0f} s; pruned "
        f"{report.rows:,} in {report.seconds:.0f} s ({report.batches} batches, "
        f"{report.rows / max(report.seconds, 1e-9):,.0f} rows/s); {report.remaining:,} left",
        flush=True,
    )
    await vacuum(engine)
    size = await ledger_bytes(engine)
    await engine.dispose()
    print(f"after VACUUM: {size / 2**20:,.1f} MiB (the heap keeps its pages for reuse)", flush=True)
    return report.seconds


async def drain_through(url: str, n: int, batch: int, rtt_ms: float) -> float:
    target = make_url(url)
    relay = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432, delay=rtt_ms / 2000)
    await relay.start()
    via = target.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    engine = create_engine(via)
    registry = ModelRegistry.from_base(Base)
    backend = MemoryBackend(SITE)
    manager = TransactionManager(backend, registry=registry)
    await manager.buffer_many(transactions(n, uuid.uuid4().hex[:8]))
    executor = TransactionExecutor(engine, registry, site=SITE, ledger_retention=7 * 86400)
    processor = BackgroundProcessor(manager, executor, batch_size=batch)
    try:
        return await drained_per_second(processor, n)
    finally:
        await engine.dispose()
        await relay.stop()


async def drain_beside(rows: int, keep: int, n: int, batch: int, rtt_ms: float) -> None:
    async with database() as fresh_url, database() as big_url:
        await fill_and_prune(big_url, rows, keep)
        fresh = await drain_through(fresh_url, n, batch, rtt_ms)
        pruned = await drain_through(big_url, n, batch, rtt_ms)
        again = await drain_through(fresh_url, n, batch, rtt_ms)
    base = (fresh + again) / 2
    print(f"drain at {rtt_ms:g} ms RTT, batch {batch}, {n} transactions (psycopg pipeline)")
    print(f"  fresh ledger                      {base:8.0f} tx/s  1.00x")
    print(f"  {rows:,} rows pruned to {keep:,}  {pruned:8.0f} tx/s  {pruned / base:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keep", type=int, default=6_048_000 // 10, help="rows left (7 days)")
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rtt", type=float, default=200.0)
    parser.add_argument("--hours", type=int, default=8)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--retention-hours", type=float, default=3.0)
    parser.add_argument("--skip-steady", action="store_true")
    parser.add_argument("--skip-drain", action="store_true")
    args = parser.parse_args()
    if not args.skip_steady:
        asyncio.run(steady_size(args.hours, args.rate, args.retention_hours))
    if not args.skip_drain:
        asyncio.run(
            drain_beside(
                args.rows, min(args.keep, args.rows), args.transactions, args.batch, args.rtt
            )
        )


if __name__ == "__main__":
    main()
