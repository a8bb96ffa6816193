"""The drain over a long-haul link: a delay relay at 0, 50, 200 and 500 ms round trip.

For each round-trip time, in the same run, through the same relay of its own
on loopback (which counts round trips and bytes):

* **floor**: the same rows in one round trip per batch, one message (BEGIN,
  one multi-row INSERT per table, the ledger rows, COMMIT, the LSN read),
  asyncpg's simple-query protocol with literal values, no buffer at all;
* **origin shape**: one transaction per claim, commit and LSN read (batch 1,
  no ledger, asyncpg), as the origin's processor drains;
* **ours**: the processor end to end (claim, apply with the ledger, commit,
  LSN, ack, status) with ``postgresql+psycopg`` (pipeline mode) at batch 100
  and 1000, with asyncpg at batch 100, and with the default settings (adaptive
  batches between their bounds).

It prints tx/s, round trips per batch counted at the relay, and ours as a
ratio of the floor at the same batch size. The buffer is Redis when it
answers, else memory.

Run: ``python bench/wan_bench.py [--rtt 0,50,200,500]`` (``make bench`` runs it).
Environment: ``CCAT_TEST_POSTGRES_URL``, ``CCAT_TEST_REDIS_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import multiprocessing
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from drain_bench import POSTGRES_URL, _backend, close_backend, transactions
from sqlalchemy import insert, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from ccat_buffering._heap import settle_heap
from ccat_buffering.builder import TransactionBuilder
from ccat_buffering.coordinator import batch_sizer, link_timeouts
from ccat_buffering.database import LEDGER_TABLE_NAME, create_engine
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.executor import BatchResult, TransactionExecutor
from ccat_buffering.manager import TransactionManager
from ccat_buffering.models import Operation, Transaction
from ccat_buffering.processor import BackgroundProcessor
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.settings import BufferingSettings


@dataclass
class Cell:
    rate: float
    round_trips: float


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


async def floor(url: URL, relay: RelayProcess, batch_size: int, batches: int) -> Cell:
    import asyncpg

    registry = ModelRegistry.from_base(Base)
    txs = transactions(batch_size * batches, uuid.uuid4().hex[:8])
    scripts = [
        floor_script(txs[i : i + batch_size], registry) for i in range(0, len(txs), batch_size)
    ]
    conn = await asyncpg.connect(
        host="127.0.0.1", port=relay.port, user=url.username, database=url.database
    )
    try:
        before = relay.round_trips
        began = time.perf_counter()
        for script in scripts:
            await conn.execute(script)
        seconds = time.perf_counter() - began
        trips = (relay.round_trips - before) / len(scripts)
    finally:
        await conn.close()
    return Cell(len(txs) / seconds, trips)


async def ours(
    url: URL,
    relay: RelayProcess,
    n: int,
    *,
    batch_size: int,
    driver: str = "psycopg",
    ledger: bool = True,
    adaptive: bool = False,
    make: Callable[[int], list[Transaction]] | None = None,
) -> Cell:
    """The processor end to end; the first batch (connections, RTT probe) is not timed.

    ``make(count)`` gives the transactions (the example's ``record_scan`` by default).
    """
    settings = BufferingSettings(site_name="bench")
    proxied = url.set(drivername=f"postgresql+{driver}", host="127.0.0.1", port=relay.port)
    timeouts = link_timeouts(settings)
    engine = create_engine(proxied.render_as_string(hide_password=False), timeouts=timeouts)
    registry = ModelRegistry.from_base(Base)
    executor = TransactionExecutor(engine, registry, ledger=ledger, timeouts=timeouts)
    backend, _ = await _backend(f"bench-{uuid.uuid4().hex[:8]}")
    manager = TransactionManager(backend, registry=registry)
    warm = batch_size
    txs = make(n + warm) if make is not None else transactions(n + warm, uuid.uuid4().hex[:8])
    for start in range(0, len(txs), 500):
        await manager.buffer_many(txs[start : start + 500])
    del txs  # the producers' objects live in their own processes, not the worker's
    processor = BackgroundProcessor(
        manager,
        executor,
        batch_size=batch_size,
        sizer=batch_sizer(settings) if adaptive else None,
        prefetch=settings.batch_prefetch,
    )
    sizes: list[int] = []  # of the batches applied, counted as the executor sees them
    execute_batch = executor.execute_batch

    async def counted(batch: Sequence[Transaction]) -> BatchResult:
        sizes.append(len(batch))
        return await execute_batch(batch)

    executor.execute_batch = counted  # type: ignore[method-assign]
    try:
        done = 0
        while done < warm:
            done += await processor.run_once()
        # Then the worker's loop, which settles a batch behind the next one's round trip.
        sizes.clear()
        thresholds = gc.get_threshold()
        settle_heap()  # as `ccat-buffering worker` does before it starts the loop
        before, began = relay.round_trips, time.perf_counter()
        processor.start()
        deadline = began + 600
        while processor.counters.processed < n + warm and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - began
        applied_total = processor.counters.processed - done
        trips = (relay.round_trips - before) / max(len(sizes), 1)
        await processor.stop()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        if adaptive:
            print(f"   default settings: batch sizes {sizes[:3]} ... {sizes[-3:]}", flush=True)
    finally:
        await close_backend(backend)
        await engine.dispose()
    return Cell(applied_total / seconds, trips)


def _count(rtt_ms: int, per_item_trips: float, seconds: float, lowest: int) -> int:
    """How many to measure so that a cell takes about ``seconds``."""
    return max(lowest, int(seconds / max(per_item_trips * rtt_ms / 1000, 1e-4)))


def _serve_relay(host: str, port: int, delay: float, pipe: Connection) -> None:
    """In the relay's own process: forward, and answer each request with the counters."""

    async def serve() -> None:
        relay = LoopbackRelay(host, port, delay=delay)
        await relay.start()
        pipe.send(relay.port)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def answer() -> None:
            command = pipe.recv()
            if command == "stop":
                done.set_result(None)
            elif command == "hang":
                relay.hang()
            elif command == "answer":
                relay.answer()
            else:
                pipe.send(relay.counters.round_trips)

        loop.add_reader(pipe.fileno(), answer)
        await done
        await relay.stop()

    asyncio.run(serve())


class RelayProcess:
    """The relay in a process of its own, so that the drain's CPU cannot delay the link.

    On the drain's own event loop (or its GIL), every millisecond the client
    computes would hold the relay's delayed packets back too, and the round
    trip would grow by the client's work; a real link runs beside the client.
    """

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.pipe, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(
            target=_serve_relay, args=(host, port, delay, child), daemon=True
        )
        self.port = 0

    def __enter__(self) -> RelayProcess:
        self.process.start()
        self.port = int(self.pipe.recv())
        return self

    @property
    def round_trips(self) -> int:
        """Round trips the relay has counted so far."""
        self.pipe.send("count")
        return int(self.pipe.recv())

    def hang(self) -> None:
        """Drop every byte from now on, keeping the connections open."""
        self.pipe.send("hang")

    def answer(self) -> None:
        """Forward again."""
        self.pipe.send("answer")

    def __exit__(self, *exc: object) -> None:
        self.pipe.send("stop")
        self.process.join(10)


async def one_rtt(url: URL, rtt_ms: int) -> list[tuple[str, Cell, Cell | None]]:
    with RelayProcess(url.host or "127.0.0.1", url.port or 5432, rtt_ms / 2000) as relay:
        floor100 = await floor(url, relay, 100, 5)
        floor1000 = await floor(url, relay, 1000, 3)
        origin_n = min(_count(rtt_ms, 12, 6.0, 2), 300)
        origin = await ours(url, relay, origin_n, batch_size=1, driver="asyncpg", ledger=False)
        rows: list[tuple[str, Cell, Cell | None]] = [
            ("floor, batch 100 (1 message)", floor100, None),
            ("floor, batch 1000 (1 message)", floor1000, None),
            ("origin shape (batch 1, asyncpg)", origin, None),
        ]
        asyncpg_batches = 2 if rtt_ms >= 200 else 5
        rows.append(
            (
                "ours, batch 100, asyncpg",
                await ours(url, relay, 100 * asyncpg_batches, batch_size=100, driver="asyncpg"),
                floor100,
            )
        )
        rows.append(
            ("ours, batch 100, psycopg", await ours(url, relay, 500, batch_size=100), floor100)
        )
        rows.append(
            ("ours, batch 1000, psycopg", await ours(url, relay, 3000, batch_size=1000), floor1000)
        )
        defaults = BufferingSettings(site_name="bench")
        rows.append(
            (
                "ours, default settings, psycopg",
                await ours(url, relay, 8000, batch_size=defaults.batch_size, adaptive=True),
                floor1000,
            )
        )
        return rows


async def _running_units(url: URL, n: int) -> list[str]:
    """``n`` observation units with status ``running``, written directly (not timed)."""
    engine = create_engine(url.render_as_string(hide_password=False))
    ids = [str(uuid.uuid4()) for _ in range(n)]
    now = dt.datetime.now(dt.UTC)
    rows = [{"id": i, "obs_unit_id": 1, "status": "running", "start_time": now} for i in ids]
    try:
        async with engine.begin() as conn:
            for start in range(0, n, 5000):
                await conn.execute(insert(ExecutedObsUnit), rows[start : start + 5000])
    finally:
        await engine.dispose()
    return ids


def _finishes(ids: list[str], with_base: bool) -> Callable[[int], list[Transaction]]:
    """``finish_observation`` transactions: each sets a unit's status and end time."""

    def make(count: int) -> list[Transaction]:
        out = []
        for unit in ids[:count]:
            tx = TransactionBuilder("finish_observation")
            tx.update(
                "ExecutedObsUnit",
                unit,
                {"status": "done", "end_time": dt.datetime.now(dt.UTC)},
                expected={"status": "running", "end_time": None} if with_base else None,
            )
            out.append(tx.build())
        return out

    return make


async def base_check(url: URL, rtt_ms: int, n: int = 2000) -> list[tuple[str, Cell, Cell | None]]:
    """Updates drained with their base checked (compare-and-set) and without, side by side."""
    rows: list[tuple[str, Cell, Cell | None]] = []
    with RelayProcess(url.host or "127.0.0.1", url.port or 5432, rtt_ms / 2000) as relay:
        for batch in (100, 1000):
            off = await ours(
                url,
                relay,
                n,
                batch_size=batch,
                make=_finishes(await _running_units(url, n + batch), False),
            )
            on = await ours(
                url,
                relay,
                n,
                batch_size=batch,
                make=_finishes(await _running_units(url, n + batch), True),
            )
            rows.append((f"updates, batch {batch}, psycopg, base check off", off, None))
            rows.append((f"updates, batch {batch}, psycopg, base check on", on, off))
    return rows


@dataclass
class HangResult:
    reported_after: float
    resumed_after: float
    lost: int
    applied_twice: int
    dead_lettered: int


async def hung_link(url: URL, rtt_ms: int, hang_seconds: float, n: int = 3000) -> HangResult:
    """Drain through a link that hangs for ``hang_seconds`` in the middle of the drain."""
    from sqlalchemy import func, select

    from ccat_buffering.demo.example import RawDataFile
    from ccat_buffering.processor import ProcessorState

    settings = BufferingSettings(site_name="bench", statement_timeout=5.0, connect_timeout=5.0)
    with RelayProcess(url.host or "127.0.0.1", url.port or 5432, rtt_ms / 2000) as relay:
        proxied = url.set(drivername="postgresql+psycopg", host="127.0.0.1", port=relay.port)
        timeouts = link_timeouts(settings)
        engine = create_engine(proxied.render_as_string(hide_password=False), timeouts=timeouts)
        registry = ModelRegistry.from_base(Base)
        executor = TransactionExecutor(engine, registry, timeouts=timeouts)
        backend, _ = await _backend(f"bench-{uuid.uuid4().hex[:8]}")
        manager = TransactionManager(backend, registry=registry)
        run = uuid.uuid4().hex[:8]
        txs = transactions(n, run)
        for start in range(0, n, 500):
            await manager.buffer_many(txs[start : start + 500])
        processor = BackgroundProcessor(
            manager,
            executor,
            batch_size=settings.batch_size,
            probe_interval=settings.outage_probe_interval,
            sizer=batch_sizer(settings),
            prefetch=settings.batch_prefetch,
        )
        processor.start()
        try:
            while (await backend.buffer.stats()).depth > n * 0.8:
                await asyncio.sleep(0.05)
            relay.hang()
            hung_at = time.monotonic()
            while True:
                health = await processor.health()
                if health.state is ProcessorState.PAUSED and "not answering" in (
                    health.cause or ""
                ):
                    break
                await asyncio.sleep(0.05)
            reported = time.monotonic() - hung_at
            await asyncio.sleep(max(hung_at + hang_seconds - time.monotonic(), 0))
            processed = processor.counters.processed
            relay.answer()
            answered = time.monotonic()
            while processor.counters.processed == processed:
                await asyncio.sleep(0.05)
            resumed = time.monotonic() - answered
            while True:
                stats = await backend.buffer.stats()
                if stats.depth == 0 and stats.in_flight == 0:
                    break
                await asyncio.sleep(0.1)
        finally:
            await processor.stop()
        dead = (await backend.buffer.stats()).dead_letters
        direct = create_engine(url.render_as_string(hide_password=False))
        async with direct.connect() as conn:
            pattern = RawDataFile.path.like(f"/{run}/%")
            total = (await conn.execute(select(func.count()).where(pattern))).scalar_one()
            distinct = (
                await conn.execute(
                    select(func.count(func.distinct(RawDataFile.path))).where(pattern)
                )
            ).scalar_one()
        await direct.dispose()
        await close_backend(backend)
        await engine.dispose()
    files_per_tx = 2
    return HangResult(reported, resumed, n * files_per_tx - distinct, total - distinct, dead)


def _print(table: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


async def main(rtts: Sequence[int], *, base_check_only: bool = False) -> None:
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"ccat_bench_{uuid.uuid4().hex[:8]}"
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name)
    try:
        engine = create_engine(url.render_as_string(hide_password=False))
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await TransactionExecutor(engine, ModelRegistry.from_base(Base)).create_ledger()
        await engine.dispose()
        header = ("RTT", "drain", "tx/s", "round trips/batch", "vs check off")
        checks: list[tuple[str, ...]] = [header]
        for rtt in rtts:
            for label, cell, off in await base_check(url, rtt):
                ratio = "" if off is None else f"{cell.rate / off.rate:.2f}x"
                checks.append(
                    (f"{rtt} ms", label, f"{cell.rate:,.1f}", f"{cell.round_trips:.1f}", ratio)
                )
        print("the base check (compare-and-set) on updates, on and off (issue 19)")
        _print(checks)
        if base_check_only:
            return
        print("drain over a delay relay (example schema: obs unit, package, two files per tx)")
        header = ("RTT", "drain", "tx/s", "round trips/batch", "vs floor")
        table: list[tuple[str, ...]] = [header]
        for rtt in rtts:
            for label, cell, base in await one_rtt(url, rtt):
                ratio = "" if base is None else f"{cell.rate / base.rate:.2f}x"
                table.append(
                    (f"{rtt} ms", label, f"{cell.rate:,.1f}", f"{cell.round_trips:.1f}", ratio)
                )
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for row in table:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        hang_rtt = 200 if 200 in rtts else rtts[-1]
        hang = await hung_link(url, hang_rtt, 20.0)
        print(
            f"hung link at {hang_rtt} ms (statement_timeout 5 s, 20 s without an answer, "
            "default settings otherwise):"
        )
        print(
            f"  outage reported after {hang.reported_after:.1f} s (goal <= 10 s); drain resumed "
            f"{hang.resumed_after:.1f} s after the link answered (goal <= 10 s); lost "
            f"{hang.lost}, applied twice {hang.applied_twice}, dead-lettered {hang.dead_lettered}"
        )
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", default="0,50,200,500", help="round-trip times in ms")
    parser.add_argument(
        "--base-check-only", action="store_true", help="only the base check on/off comparison"
    )
    args = parser.parse_args()
    asyncio.run(main([int(x) for x in args.rtt.split(",")], base_check_only=args.base_check_only))
