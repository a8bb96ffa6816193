"""Draining into PostgreSQL: against the origin's shape, the one-round-trip floor, and per stage.

Everything runs end to end in the same process against the same PostgreSQL
and the same buffer (Redis when it answers, else the memory backend), in
interleaved rounds (the machine is shared: each figure is min / median / max
over the rounds, and every ratio compares cells of the same round):

* **origin shape**: one claimed transaction per database transaction, commit
  and LSN query, no ledger (asyncpg), as the origin's processor drains;
* **batch 100**, with the exactly-once ledger on and off (asyncpg, the
  session path);
* **floor, batch 1000**: the same rows in one message per batch (BEGIN, one
  multi-row INSERT per table, the ledger rows, COMMIT, the LSN read), asyncpg's
  simple-query protocol with literal values, no buffer at all;
* **processor.drain(), batch 1000**: the worker's path (``postgresql+psycopg``,
  pipeline mode, prefetch on), claim to acknowledgement;
* **worker CPU per transaction**: the drain's process CPU plus the replication
  tracker's (confirming the same transactions), divided by their number, and
  where it goes by stage (a sequential drain, each stage's process CPU);
* **the drain's idle share**: how much of ``drain()``'s wall time its event
  loop waited with nothing to run (for the database or Redis), which a better
  overlap of the client's work with theirs could still take.

Run: ``python bench/drain_bench.py [--transactions N] [--rounds R]`` (``make bench`` runs it).
Environment: ``CCAT_TEST_POSTGRES_URL``, ``CCAT_TEST_REDIS_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

import ccat_buffering.buffer._entries as entries_module
from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.protocols import Backend
from ccat_buffering.confirm.replication import ImmediateReplicationChecker, ReplicationTracker
from ccat_buffering.demo._workload import add_observation, add_raw_files
from ccat_buffering.demo.example import Base
from ccat_buffering.drain.database import LEDGER_TABLE_NAME, create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Operation, Transaction
from ccat_buffering.write.registry import ModelRegistry
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


async def close_backend(backend: Backend) -> None:
    """Close a benchmark's backend, leaving nothing of its site behind in Redis."""
    client = getattr(backend, "client", None)
    if client is not None:
        keys = [k async for k in client.scan_iter(match=backend.keys.pattern())]  # type: ignore[attr-defined]
        for start in range(0, len(keys), 500):
            await client.unlink(*keys[start : start + 500])
    await backend.aclose()


async def drained_per_second(processor: BackgroundProcessor, n: int) -> float:
    """Run batches until ``n`` are applied; transactions per second."""
    began = time.perf_counter()
    done = 0
    while done < n:
        done += await processor.run_once()
    return n / (time.perf_counter() - began)


# -- the floor: one message per batch, no buffer -------------------------------


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dt.datetime | dt.date):
        value = value.isoformat()
    return "'" + str(value).replace("'", "''") + "'"


def floor_script(batch: Sequence[Transaction], registry: ModelRegistry) -> str:
    """One message: BEGIN, one INSERT per table, the ledger rows, COMMIT, the LSN read."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for tx in batch:
        for step in tx.steps:
            assert step.operation in (Operation.CREATE, Operation.BULK_CREATE)
            for record in step.records or [step.data or {}]:
                rows.setdefault(registry.mapper(step.model).local_table.name, []).append(record)  # type: ignore[attr-defined]
    now = dt.datetime.now(dt.UTC)
    rows[LEDGER_TABLE_NAME] = [
        {"transaction_id": tx.transaction_id, "endpoint": tx.endpoint, "applied_at": now}
        for tx in batch
    ]
    parts = ["BEGIN"]
    for table in ("executed_obs_unit", "raw_data_package", "raw_data_file", LEDGER_TABLE_NAME):
        records = rows[table]
        columns = list(records[0])
        values = ",".join(
            "(" + ",".join(_literal(r.get(c)) for c in columns) + ")" for r in records
        )
        parts.append(f"INSERT INTO {table} ({','.join(columns)}) VALUES {values}")
    parts += ["COMMIT", "SELECT pg_current_wal_insert_lsn()"]
    return ";".join(parts)


async def floor_rate(
    url: URL,
    batch_size: int,
    batches: int,
    *,
    port: int | None = None,
    count: Callable[[], int] | None = None,
) -> tuple[float, float]:
    """The floor's tx/s at ``batch_size`` (scripts built before timing), and round trips per batch.

    Args:
        url: The database.
        batch_size: Transactions per message.
        batches: Messages timed.
        port: Connect here instead (a relay on loopback).
        count: The relay's round-trip counter, if any.
    """
    import asyncpg

    registry = ModelRegistry.from_base(Base)
    txs = transactions(batch_size * batches, uuid.uuid4().hex[:8])
    scripts = [
        floor_script(txs[i : i + batch_size], registry) for i in range(0, len(txs), batch_size)
    ]
    conn = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=port or url.port or 5432,
        user=url.username,
        database=url.database,
    )
    try:
        before = count() if count else 0
        began = time.perf_counter()
        for script in scripts:
            await conn.execute(script)
        seconds = time.perf_counter() - began
        trips = ((count() if count else 0) - before) / len(scripts)
    finally:
        await conn.close()
    return len(txs) / seconds, trips


# -- the drain, end to end -------------------------------------------------------


async def drain_rate(db_url: str, n: int, batch_size: int, ledger: bool) -> tuple[float, str]:
    """Transactions per second drained end to end (``run_once``), and which buffer was used."""
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


class Stages:
    """Process CPU by stage of a sequential drain, by wrapping the calls that make each."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def _wrap(self, owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)
        cpu = self.cpu

        if asyncio.iscoroutinefunction(original):

            @functools.wraps(original)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                began = time.process_time()
                try:
                    return await original(*args, **kwargs)
                finally:
                    cpu[stage] = cpu.get(stage, 0.0) + time.process_time() - began

            setattr(owner, name, timed_async)
        else:

            @functools.wraps(original)
            def timed(*args: Any, **kwargs: Any) -> Any:
                began = time.process_time()
                try:
                    return original(*args, **kwargs)
                finally:
                    cpu[stage] = cpu.get(stage, 0.0) + time.process_time() - began

            setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original))

    def __enter__(self) -> Stages:
        self._wrap(entries_module, "read_claims", "decode the claimed entries")
        self._wrap(TransactionManager, "claim", "claim")
        self._wrap(TransactionExecutor, "execute_batch", "execute")
        self._wrap(TransactionExecutor, "_run", "send and read the message")
        self._wrap(TransactionManager, "committed", "write committed, acknowledge")
        self._wrap(ReplicationTracker, "poll_once", "replication tracker")
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()

    def table(self, total: float) -> dict[str, float]:
        """Seconds by stage, the nested ones taken out of their parents."""
        cpu = dict(self.cpu)
        decode = cpu.pop("decode the claimed entries", 0.0)
        claim = cpu.pop("claim", 0.0)
        send = cpu.pop("send and read the message", 0.0)
        execute = cpu.pop("execute", 0.0)
        out = {
            "claim: decode the entries": decode,
            "claim: the rest (the claim with statuses, processing written)": claim - decode,
            "prepare: checks, FK-order plan, message": execute - send,
            "send and read the message (psycopg)": send,
            **cpu,
        }
        out["the rest (loop, lease, buffer stats)"] = total - sum(out.values())
        return out


async def worker_drain(
    db_url: str, n: int, *, batch_size: int = 1000, profile: bool = False
) -> tuple[float, float, dict[str, float]]:
    """``processor.drain()`` as the worker drains, then the tracker confirming it.

    Returns:
        The drain's tx/s, the worker's CPU per transaction (drain and tracker,
        seconds), and with ``profile`` (a drain without prefetch, so that the
        stages run one after another) seconds per transaction by stage.
    """
    from ccat_buffering.drain._heap import settle_heap

    url = make_url(db_url).set(drivername="postgresql+psycopg")
    engine = create_engine(url.render_as_string(hide_password=False))
    registry = ModelRegistry.from_base(Base)
    executor = TransactionExecutor(engine, registry)
    backend, _ = await _backend(f"bench-{uuid.uuid4().hex[:8]}")
    manager = TransactionManager(backend, registry=registry)
    txs = transactions(n + batch_size, uuid.uuid4().hex[:8])
    for start in range(0, len(txs), 500):
        await manager.buffer_many(txs[start : start + 500])
    del txs  # the producers' objects live in their own processes, not the worker's
    processor = BackgroundProcessor(manager, executor, batch_size=batch_size, prefetch=not profile)
    tracker = ReplicationTracker(manager, ImmediateReplicationChecker())
    thresholds = __import__("gc").get_threshold()
    try:
        done = 0
        while done < batch_size:  # warm: connections, caches, the conflict log
            done += await processor.run_once()
        await tracker.poll_once()
        settle_heap(batch_size)  # as `ccat-buffering worker` does before it starts the loop
        stages = Stages()
        with stages if profile else _nothing():
            cpu, began = time.process_time(), time.perf_counter()
            with LoopIdle() as idle:
                await processor.drain(timeout=600)
            seconds = time.perf_counter() - began
            while (await tracker.poll_once()).confirmed:
                pass
            cpu = time.process_time() - cpu
        if not profile:
            LAST_IDLE.append(idle.seconds / seconds)
        table = {k: v / n for k, v in stages.table(cpu).items()} if profile else {}
    finally:
        gc = __import__("gc")
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        await close_backend(backend)
        await engine.dispose()
    return n / seconds, cpu / n, table


class LoopIdle:
    """Wall time the event loop sat in ``select`` with nothing to run, while measuring.

    The drain's CPU is one figure; whether its client work hides behind the
    database's and Redis's (or waits for them with nothing else to do) is
    another: the idle share of a drain's wall time says how much a better
    overlap could still give.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._undo: Callable[[], None] | None = None

    def __enter__(self) -> LoopIdle:
        selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
        select = selector.select

        def timed(timeout: float | None = None) -> Any:
            began = time.perf_counter()
            try:
                return select(timeout)
            finally:
                self.seconds += time.perf_counter() - began

        selector.select = timed
        self._undo = lambda: setattr(selector, "select", select)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._undo is not None:
            self._undo()


LAST_IDLE: list[float] = []
"""The idle share (0-1) of the wall time of each :func:`worker_drain` loop drain, in order."""


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """``min / median / max``."""
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


async def main(n: int, rounds: int = 3) -> list[tuple[str, str, str, str]]:
    """Measure and print the drain tables; return the first table's rows."""
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"ccat_bench_{uuid.uuid4().hex[:8]}"
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name)
    db_url = url.render_as_string(hide_password=False)
    cells: dict[str, list[float]] = {}
    stage_rounds: list[dict[str, float]] = []
    kind = "?"

    def add(key: str, value: float) -> None:
        cells.setdefault(key, []).append(value)

    try:
        engine = create_engine(db_url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await TransactionExecutor(engine, ModelRegistry.from_base(Base)).create_ledger()
        await engine.dispose()
        for _ in range(rounds):
            baseline, kind = await drain_rate(db_url, max(n // 10, 200), 1, ledger=False)
            batched, _ = await drain_rate(db_url, n, 100, ledger=True)
            no_ledger, _ = await drain_rate(db_url, n, 100, ledger=False)
            floor, _ = await floor_rate(url, 1000, max(n // 300, 10))
            drained, cpu, _ = await worker_drain(db_url, max(n, 3000))
            add("idle", LAST_IDLE[-1] * 100)
            _, _, stages = await worker_drain(db_url, max(n, 3000), profile=True)
            stage_rounds.append(stages)
            add("baseline", baseline)
            add("batched", batched)
            add("no_ledger", no_ledger)
            add("floor", floor)
            add("drained", drained)
            add("cpu", cpu * 1e6)
            add("batched/baseline", batched / baseline)
            add("no_ledger/baseline", no_ledger / baseline)
            add("drained/floor", drained / floor)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
    ratio = "{:.2f}x"
    rows = [
        ("origin shape: 1 per commit, no ledger", spread(cells["baseline"]), "1.00x", ""),
        (
            "batch 100, ledger on (asyncpg)",
            spread(cells["batched"]),
            spread(cells["batched/baseline"], ratio),
            ">= 10x",
        ),
        (
            "batch 100, ledger off (asyncpg)",
            spread(cells["no_ledger"]),
            spread(cells["no_ledger/baseline"], ratio),
            "",
        ),
    ]
    baseline_n = max(n // 10, 200)
    print(
        f"drain into PostgreSQL, buffer on {kind}, {n} transactions (baseline on {baseline_n}), "
        f"min / median / max of {rounds} interleaved rounds"
    )
    _table(("drain", "tx/s", "vs origin", "goal"), rows)
    print()
    print("the worker's drain at 0 ms against the floor (one message per batch), batch 1000")
    _table(
        ("drain", "tx/s", "vs floor", "goal"),
        [
            ("floor, batch 1000 (1 message, no buffer)", spread(cells["floor"]), "1.00x", ""),
            (
                "processor.drain(), batch 1000, psycopg",
                spread(cells["drained"]),
                spread(cells["drained/floor"], ratio),
                ">= 0.70x",
            ),
        ],
    )
    print(f"worker CPU per transaction (drain + replication tracker): {spread(cells['cpu'])} us")
    print(
        "drain()'s event loop waiting with nothing to run: "
        f"{spread(cells['idle'], '{:.0f}')} % of its wall time"
    )
    print()
    print("where the worker's CPU goes, us per transaction (sequential drain, batch 1000)")
    names = list(stage_rounds[0])
    _table(
        ("stage", "us/tx (min / median / max)"),
        [(k, spread([r.get(k, 0.0) * 1e6 for r in stage_rounds], "{:.1f}")) for k in names]
        + [("total", spread([sum(r.values()) * 1e6 for r in stage_rounds], "{:.1f}"))],
    )
    return rows


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.transactions, args.rounds))
