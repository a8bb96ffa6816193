"""Benchmarks on the embedded default (memory backend + SQLite), as ratios to baselines.

Every figure is measured in the same run as its baseline, so the ratio holds on
a shared, noisy machine even where the absolute rates do not.

* buffer: ``TransactionManager.buffer()`` (validation, serialisation, queue entry,
  status and both caches in one atomic group) against the bare minimum of
  serialising the transaction and appending it to a deque.
* drain: the processor claiming and applying 100 transactions per database
  transaction (savepoint each) against the origin's shape, one transaction
  per claim, commit and status; with the ledger on and off.

Then the Redis benchmarks of :mod:`redis_bench` (skipped when Redis cannot be
reached): ``TransactionManager`` on ``RedisBackend`` against raw ``LPUSH``, the
origin's four commands and arq, and Redis memory per buffered transaction.

Then the PostgreSQL drain of :mod:`drain_bench` (batches with the ledger against
the origin's one-at-a-time shape), the replication timing of
:mod:`replication_bench` (commit to visible on a streaming replica the run
starts), the drain over a delay relay at 0, 50, 200 and 500 ms round trip
of :mod:`wan_bench` (against the one-round-trip floor), and the reads of
:mod:`reads_bench` (a filtered ``Reads.list`` with 1,000, 10,000 and 40,000
buffered records against none), each skipped with the reason when its server
is missing.

Run with ``make bench`` or ``python bench/run.py [--transactions N]
[--memory-transactions N] [--seconds S] [--rounds R] [--redis-url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
import time
from pathlib import Path

import drain_bench
import reads_bench
import redis_bench
import replication_bench
import wan_bench

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.demo._workload import add_observation
from ccat_buffering.demo.example import Base
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend


def _transactions(n: int, offset: int = 0) -> list[Transaction]:
    import datetime as dt

    out = []
    for i in range(offset, offset + n):
        tx = TransactionBuilder("start_observation")
        add_observation(tx, i, name=f"pkg-{i}", start_time=dt.datetime.now(dt.UTC))
        out.append(tx.build())
    return out


async def bench_buffer(n: int) -> tuple[float, float]:
    txs = _transactions(n)
    queue: collections.deque[str] = collections.deque()
    began = time.perf_counter()
    for tx in txs:
        queue.append(tx.to_json())
    baseline = n / (time.perf_counter() - began)
    manager = TransactionManager(MemoryBackend("bench"))
    began = time.perf_counter()
    for tx in txs:
        await manager.buffer(tx)
    ours = n / (time.perf_counter() - began)
    return ours, baseline


async def bench_drain(n: int, batch_size: int, ledger: bool, workdir: Path) -> float:
    path = workdir / f"drain-{batch_size}-{ledger}.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    registry = ModelRegistry.from_base(Base)
    executor = TransactionExecutor(engine, registry, ledger=ledger)
    await executor.create_ledger()
    manager = TransactionManager(MemoryBackend("bench"), registry=registry)
    await manager.buffer_many(_transactions(n))
    processor = BackgroundProcessor(manager, executor, batch_size=batch_size)
    rate = await drain_bench.drained_per_second(processor, n)
    await engine.dispose()
    return rate


async def main(n: int) -> None:
    rows: list[tuple[str, str, str, str]] = []
    ours, baseline = await bench_buffer(n)
    rows.append(
        ("buffer() on memory", f"{ours:,.0f}/s", f"{baseline:,.0f}/s", f"{ours / baseline:.2f}x")
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        single = await bench_drain(n // 4, 1, True, workdir)
        batched = await bench_drain(n, 100, True, workdir)
        no_ledger = await bench_drain(n, 100, False, workdir)
    rows.append(
        (
            "drain, batch 100, ledger on",
            f"{batched:,.0f}/s",
            f"{single:,.0f}/s",
            f"{batched / single:.2f}x",
        )
    )
    rows.append(
        (
            "drain, batch 100, ledger off",
            f"{no_ledger:,.0f}/s",
            f"{single:,.0f}/s",
            f"{no_ledger / single:.2f}x",
        )
    )
    header = ("benchmark", "ours", "baseline", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print(f"transactions: {n} (drain baseline: one per claim and commit, on {n // 4})")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=4000)
    redis_bench.add_arguments(parser)
    args = parser.parse_args()
    asyncio.run(main(args.transactions))
    asyncio.run(redis_bench.run(redis_bench.Options.from_args(args)))
    for title, bench in (
        ("PostgreSQL drain", lambda: drain_bench.main(args.transactions)),
        ("replication", lambda: replication_bench.main(1000)),
        ("drain over a long-haul link", lambda: wan_bench.main([0, 50, 200, 500])),
        ("reads", lambda: reads_bench.main(200, [1000, 10000, 40000])),
    ):
        print()
        try:
            asyncio.run(bench())
        except Exception as exc:  # a missing server: say so and go on
            print(f"{title}: skipped ({type(exc).__name__}: {exc})")
