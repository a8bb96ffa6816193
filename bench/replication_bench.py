"""Commit to visible on the site's replica: LSN tracking against the replica's own speed.

Starts a throwaway PostgreSQL primary and streaming replica on loopback, then
measures in the same run:

* raw replay latency: commit one row on the primary, read the LSN after
  COMMIT, and poll the replica's ``pg_last_wal_replay_lsn()`` in a tight loop
  until it passes it;
* ours: 1,000 transactions drained by the processor while the replication
  tracker polls at its default interval (0.1 s); the time from each
  transaction's ``committed_at`` to its ``replicated_at``;
* replica queries per second made by the tracker with 1 and with 1,000
  transactions pending (replay paused), counted with an SQLAlchemy event.

Goal: median commit-to-replicated <= poll interval + 2 x the raw median, and
replica queries per second independent of the pending count.

Run: ``python bench/replication_bench.py [--transactions N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from drain_bench import transactions
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.confirm.replication import LSNReplicationChecker, ReplicationTracker
from ccat_buffering.demo.example import Base
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend

# The throwaway servers are the tests' (tests/servers.py), not the shipped package's.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import streaming_replica

POLL_INTERVAL = 0.1


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def raw_replay(primary: AsyncEngine, replica: AsyncEngine, n: int) -> list[float]:
    """Seconds from COMMIT on the primary to replay on the replica, ``n`` times."""
    async with primary.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS bench_ping (id serial primary key)"))
    delays = []
    async with primary.connect() as writer, replica.connect() as reader:
        for _ in range(n):
            await writer.execute(text("INSERT INTO bench_ping DEFAULT VALUES"))
            await writer.commit()
            committed = time.perf_counter()
            lsn = LSN.parse(
                (await writer.execute(text("SELECT pg_current_wal_insert_lsn()::text"))).scalar()
            )
            await writer.rollback()
            while True:
                replayed = (
                    await reader.execute(text("SELECT pg_last_wal_replay_lsn()::text"))
                ).scalar()
                await reader.rollback()
                if LSN.parse(replayed) >= lsn:
                    break
            delays.append(time.perf_counter() - committed)
    return delays


async def ours(primary: AsyncEngine, replica: AsyncEngine, n: int) -> list[float]:
    """Seconds from commit to ``replicated`` for ``n`` transactions, as statuses record them."""
    registry = ModelRegistry.from_base(Base)
    manager = TransactionManager(MemoryBackend("bench-replication"), registry=registry)
    processor = BackgroundProcessor(
        manager, TransactionExecutor(primary, registry), batch_size=10, poll_interval=0.005
    )
    tracker = ReplicationTracker(
        manager, LSNReplicationChecker(replica), poll_interval=POLL_INTERVAL
    )
    txs = transactions(n, "replication")
    draining = processor.start()
    tracking = asyncio.create_task(tracker.run())
    for tx in txs:  # a steady stream, as a site's services write
        await manager.buffer(tx)
        await asyncio.sleep(0.002)
    deadline = time.monotonic() + 120
    while (await manager.backend.status.counts())[TransactionState.REPLICATED] < n:
        assert time.monotonic() < deadline, "not everything replicated in time"
        await asyncio.sleep(0.05)
    await processor.stop()
    tracker.stop()
    await tracking
    assert draining.done()
    statuses = await manager.backend.status.get_many([tx.transaction_id for tx in txs])
    return [
        (s.replicated_at - s.committed_at).total_seconds()
        for s in statuses
        if s is not None and s.replicated_at is not None and s.committed_at is not None
    ]


async def queries_per_second(
    primary: AsyncEngine, replica: AsyncEngine, pending: int, seconds: float = 2.0
) -> float:
    """Replica statements per second the tracker makes with ``pending`` commits waiting."""
    registry = ModelRegistry.from_base(Base)
    manager = TransactionManager(MemoryBackend(f"bench-qps-{pending}"), registry=registry)
    processor = BackgroundProcessor(manager, TransactionExecutor(primary, registry))
    async with replica.connect() as conn:
        await conn.execute(text("SELECT pg_wal_replay_pause()"))
        await conn.commit()
    try:
        await manager.buffer_many(transactions(pending, f"qps{pending}"))
        while await processor.run_once():
            pass
        tracker = ReplicationTracker(
            manager, LSNReplicationChecker(replica), poll_interval=POLL_INTERVAL
        )
        await tracker.poll_once()
        count = 0

        def counted(*args: object) -> None:
            nonlocal count
            count += 1

        event.listen(replica.sync_engine, "before_cursor_execute", counted)
        task = asyncio.create_task(tracker.run())
        await asyncio.sleep(seconds)
        tracker.stop()
        await task
        event.remove(replica.sync_engine, "before_cursor_execute", counted)
        assert (await tracker.poll_once()).pending == pending
        return count / seconds
    finally:
        async with replica.connect() as conn:
            await conn.execute(text("SELECT pg_wal_replay_resume()"))
            await conn.commit()


async def main(n: int) -> None:
    """Start a primary and replica, measure, and print the table."""
    with streaming_replica() as servers:
        primary = create_engine(servers.primary_url)
        replica = create_engine(servers.replica_url)
        async with primary.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await TransactionExecutor(primary, ModelRegistry.from_base(Base)).create_ledger()
        raw = await raw_replay(primary, replica, 300)
        tracked = await ours(primary, replica, n)
        few = await queries_per_second(primary, replica, 1)
        many = await queries_per_second(primary, replica, n)
        await primary.dispose()
        await replica.dispose()
    raw_median = statistics.median(raw)
    median = statistics.median(tracked)
    goal = POLL_INTERVAL + 2 * raw_median
    print(f"commit to visible on the replica, {n} transactions, tracker poll {POLL_INTERVAL} s")
    rows = [
        (
            "raw replay latency",
            f"{raw_median * 1000:.2f} ms",
            f"{_quantile(raw, 0.99) * 1000:.2f} ms",
            "",
        ),
        (
            "ours: committed -> replicated",
            f"{median * 1000:.1f} ms",
            f"{_quantile(tracked, 0.99) * 1000:.1f} ms",
            f"median <= {goal * 1000:.1f} ms: {'PASS' if median <= goal else 'MISS'}",
        ),
        ("replica queries/s, 1 pending", f"{few:.1f}/s", "", ""),
        (
            f"replica queries/s, {n} pending",
            f"{many:.1f}/s",
            "",
            f"same as 1 pending: {'PASS' if abs(many - few) <= 0.2 * few else 'MISS'}",
        ),
    ]
    header = ("measurement", "median", "p99", "goal")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=1000)
    asyncio.run(main(parser.parse_args().transactions))
