"""The drain over a long-haul link: a delay relay at 0, 40, 200 and 500 ms round trip.

For each round-trip time, in the same run, through the same relay of its own
on loopback (which counts round trips and bytes), in interleaved rounds (the
machine is shared: each figure is min / median / max over the rounds, and
each ratio compares cells of the same round):

* **floor**: the same rows in one round trip per batch, one message (BEGIN,
  one multi-row INSERT per table, the ledger rows, COMMIT, the LSN read),
  asyncpg's simple-query protocol with literal values, no buffer at all; at
  batch 100, 1000, and **at the batch size the default settings chose**;
* **origin shape**: one transaction per claim, commit and LSN read (batch 1,
  no ledger, asyncpg), as the origin's processor drains;
* **ours**: the processor end to end (claim, apply with the ledger, commit,
  LSN, ack, status) as the worker's loop runs it, with ``postgresql+psycopg``
  (pipeline mode) at batch 100 and 1000 and with the default settings
  (adaptive batches), compared with the floor at the same batch size; and
  with asyncpg at batch 100 and with the default settings.
* **the sizer** (issue #23, goal 3): the default settings' rate against a
  fixed batch of 100 on the same driver: at least 1.00x on every driver.

It prints tx/s, round trips per batch counted at the relay, and the ratios.
The buffer is Redis when it answers, else memory.

Run: ``python bench/wan_bench.py [--rtt 0,40,200,500] [--rounds 3] [--no-base-check] [--no-hang]``
(``make bench`` runs it). ``--hang-only N [--hang-transactions 1000]`` runs the hung-link
part alone, N times, and counts the runs whose drain did not resume (each failure
prints the stacks of the asyncio tasks, where the drain waits).
Environment: ``CCAT_TEST_POSTGRES_URL``, ``CCAT_TEST_REDIS_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import multiprocessing
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

from drain_bench import (
    POSTGRES_URL,
    _backend,
    close_backend,
    floor_rate,
    spread,
    transactions,
)
from sqlalchemy import insert, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.drain._heap import settle_heap
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import BatchResult, TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.site.coordinator import batch_sizer, largest_batch, link_timeouts
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.registry import ModelRegistry


@dataclass
class Cell:
    rate: float
    round_trips: float
    chosen: int = 0
    """The median size of the batches applied (what adaptive sizing chose)."""


async def floor(url: URL, relay: RelayProcess, batch_size: int, batches: int) -> Cell:
    """The floor at ``batch_size`` through the relay (see :func:`drain_bench.floor_rate`)."""
    rate, trips = await floor_rate(
        url, batch_size, batches, port=relay.port, count=lambda: relay.round_trips
    )
    return Cell(rate, trips)


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
        # As `ccat-buffering worker` does before it starts the loop.
        settle_heap(largest_batch(settings) if adaptive else batch_size)
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
    finally:
        await close_backend(backend)
        await engine.dispose()
    full = sizes[:-1] or sizes  # the last batch takes what is left
    return Cell(applied_total / seconds, trips, int(statistics.median(full)) if full else 0)


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


async def one_round(url: URL, relay: RelayProcess, rtt_ms: int) -> dict[str, Cell]:
    """One round of every cell at one round-trip time."""
    defaults = BufferingSettings(site_name="bench")
    cells: dict[str, Cell] = {}
    cells["floor 100"] = await floor(url, relay, 100, 5)
    cells["floor 1000"] = await floor(url, relay, 1000, 3)
    origin_n = min(_count(rtt_ms, 12, 6.0, 2), 300)
    cells["origin"] = await ours(url, relay, origin_n, batch_size=1, driver="asyncpg", ledger=False)
    cells["psycopg 100"] = await ours(url, relay, 500, batch_size=100)
    cells["psycopg 1000"] = await ours(url, relay, 3000, batch_size=1000)
    cells["psycopg defaults"] = await ours(
        url, relay, 8000, batch_size=defaults.batch_size, adaptive=True
    )
    chosen = max(cells["psycopg defaults"].chosen, 1)
    cells["floor chosen"] = await floor(url, relay, chosen, 3)
    cells["floor chosen"].chosen = chosen
    asyncpg_n = 100 * (2 if rtt_ms >= 200 else 5)
    cells["asyncpg 100"] = await ours(url, relay, asyncpg_n, batch_size=100, driver="asyncpg")
    cells["asyncpg defaults"] = await ours(
        url, relay, asyncpg_n, batch_size=defaults.batch_size, driver="asyncpg", adaptive=True
    )
    return cells


ROWS: list[tuple[str, str, str | None, str]] = [
    # label, cell, compared with, goal
    ("floor, batch 100 (1 message)", "floor 100", None, ""),
    ("floor, batch 1000 (1 message)", "floor 1000", None, ""),
    ("floor, at the defaults' batch size", "floor chosen", None, ""),
    ("origin shape (batch 1, asyncpg)", "origin", None, ""),
    ("ours, batch 100, psycopg", "psycopg 100", "floor 100", ""),
    ("ours, batch 1000, psycopg", "psycopg 1000", "floor 1000", ""),
    ("ours, default settings, psycopg", "psycopg defaults", "floor chosen", ">= 0.85x at 200 ms"),
    ("  the same, vs fixed batch 100", "psycopg defaults", "psycopg 100", ">= 1.00x"),
    ("ours, batch 100, asyncpg", "asyncpg 100", "floor 100", ""),
    ("ours, default settings, asyncpg", "asyncpg defaults", "floor chosen", ""),
    ("  the same, vs fixed batch 100", "asyncpg defaults", "asyncpg 100", ">= 1.00x"),
]


async def drain_table(url: URL, rtts: Sequence[int], rounds: int) -> list[tuple[str, ...]]:
    """Every cell at every round-trip time, ``rounds`` interleaved rounds each."""
    table: list[tuple[str, ...]] = [
        ("RTT", "drain", "tx/s", "round trips/batch", "batch", "ratio", "goal")
    ]
    for rtt in rtts:
        with RelayProcess(url.host or "127.0.0.1", url.port or 5432, rtt / 2000) as relay:
            measured = [await one_round(url, relay, rtt) for _ in range(rounds)]
        for label, key, base, goal in ROWS:
            cells = [m[key] for m in measured]
            ratio = (
                ""
                if base is None
                else spread([m[key].rate / m[base].rate for m in measured], "{:.2f}x")
            )
            batch = (
                spread([c.chosen for c in cells], "{:.0f}")
                if "defaults" in key or "chosen" in key
                else ""
            )
            table.append(
                (
                    f"{rtt} ms",
                    label,
                    spread([c.rate for c in cells], "{:,.1f}"),
                    f"{statistics.median(c.round_trips for c in cells):.1f}",
                    batch,
                    ratio,
                    goal,
                )
            )
        _print(table)
        print(flush=True)
    return table


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


async def base_check_cells(
    url: URL, rtt_ms: int, n: int = 2000
) -> list[tuple[str, Cell, Cell | None]]:
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


HANG_PATIENCE = 60.0
"""Seconds the hung-link run waits for the outage report, and for the drain to resume."""


async def hung_link(url: URL, rtt_ms: int, hang_seconds: float, n: int = 3000) -> HangResult:
    """Drain through a link that hangs for ``hang_seconds`` in the middle of the drain."""
    from sqlalchemy import func, select

    from ccat_buffering.demo.example import RawDataFile
    from ccat_buffering.drain.processor import ProcessorState

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
                if time.monotonic() - hung_at > HANG_PATIENCE:
                    raise TimeoutError(f"the outage was not reported within {HANG_PATIENCE:g} s")
                await asyncio.sleep(0.05)
            reported = time.monotonic() - hung_at
            await asyncio.sleep(max(hung_at + hang_seconds - time.monotonic(), 0))
            processed = processor.counters.processed
            relay.answer()
            answered = time.monotonic()
            while processor.counters.processed == processed:
                if time.monotonic() - answered > HANG_PATIENCE:
                    _print_task_stacks()
                    raise TimeoutError(
                        f"the drain did not resume within {HANG_PATIENCE:g} s of the link "
                        f"answering ({(await processor.health()).cause})"
                    )
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


def _print_task_stacks() -> None:
    """Where every asyncio task waits, on stderr (a drain that does not resume: why)."""
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", file=sys.stderr)
        task.print_stack(file=sys.stderr)


async def hang_report(url: URL, rtt_ms: int, n: int = 3000) -> bool:
    """Run :func:`hung_link` once and print what it found; whether the drain resumed."""
    try:
        result = await hung_link(url, rtt_ms, 20.0, n)
    except TimeoutError as exc:
        print(f"hung link at {rtt_ms} ms: FAILED, {exc}", flush=True)
        return False
    print(
        f"hung link at {rtt_ms} ms (statement_timeout 5 s, 20 s without an answer, "
        "default settings otherwise):"
    )
    print(
        f"  outage reported after {result.reported_after:.1f} s (goal <= 10 s); drain resumed "
        f"{result.resumed_after:.1f} s after the link answered (goal <= 10 s); lost "
        f"{result.lost}, applied twice {result.applied_twice}, "
        f"dead-lettered {result.dead_lettered}",
        flush=True,
    )
    return True


def _print(table: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


async def main(
    rtts: Sequence[int],
    *,
    rounds: int = 3,
    base_check: bool = True,
    hang: bool = True,
    base_check_only: bool = False,
    hang_only: int = 0,
    hang_transactions: int = 3000,
) -> None:
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
        hang_rtt = 200 if 200 in rtts else rtts[-1]
        if hang_only:
            failed = 0
            for _ in range(hang_only):
                failed += not await hang_report(url, hang_rtt, hang_transactions)
            print(
                f"hung link at {hang_rtt} ms, n={hang_transactions}: FAILED {failed} of {hang_only}"
            )
            return
        if base_check or base_check_only:
            header = ("RTT", "drain", "tx/s", "round trips/batch", "vs check off")
            checks: list[tuple[str, ...]] = [header]
            for rtt in rtts:
                for label, cell, off in await base_check_cells(url, rtt):
                    ratio = "" if off is None else f"{cell.rate / off.rate:.2f}x"
                    checks.append(
                        (f"{rtt} ms", label, f"{cell.rate:,.1f}", f"{cell.round_trips:.1f}", ratio)
                    )
            print("the base check (compare-and-set) on updates, on and off (issue 19)")
            _print(checks)
        if base_check_only:
            return
        print(
            "drain over a delay relay (example schema: obs unit, package, two files per tx), "
            f"min / median / max of {rounds} interleaved rounds"
        )
        await drain_table(url, rtts, rounds)
        if not hang:
            return
        await hang_report(url, hang_rtt)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", default="0,40,200,500", help="round-trip times in ms")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per RTT")
    parser.add_argument("--no-base-check", action="store_true", help="skip the base check table")
    parser.add_argument("--no-hang", action="store_true", help="skip the hung-link run")
    parser.add_argument(
        "--base-check-only", action="store_true", help="only the base check on/off comparison"
    )
    parser.add_argument(
        "--hang-only", type=int, default=0, metavar="N", help="only the hung-link run, N times"
    )
    parser.add_argument(
        "--hang-transactions", type=int, default=3000, help="transactions of a hung-link run"
    )
    args = parser.parse_args()
    asyncio.run(
        main(
            [int(x) for x in args.rtt.split(",")],
            rounds=args.rounds,
            base_check=not args.no_base_check,
            hang=not args.no_hang,
            base_check_only=args.base_check_only,
            hang_only=args.hang_only,
            hang_transactions=args.hang_transactions,
        )
    )
