"""Operator reads: ``status`` with the main database far away, and ``status --audit`` at scale.

* **status**: a secondary site on Redis whose worker drained cleanly (its
  buffer watch recorded the marker in the main database), then
  :func:`ccat_buffering.observe.health.collect` as ``ccat-buffering status`` runs it, on
  a fresh operator site whose main database is behind a delay relay (200 ms
  round trip by default). Printed: seconds per ``status`` (min / median / max
  over rounds; the baseline is the 1.5 s bound of issue #23) and whether any
  round gave a warning (a clean drain must give none).
* **audit**: ``audit_keys`` (the scan behind ``status --audit`` and ``keys
  audit``) over sites of ``--audit-sizes`` buffered transactions, filled with
  ``TransactionManager.buffer_many`` in chunks of 500 (every key a buffered
  transaction has: status, queue entry, caches, indexes). Printed: seconds per
  size and transactions per second, to show that the cost is linear.

Run: ``python bench/status_bench.py [--rtt 200] [--rounds 3] [--audit-sizes 30000,100000]``
(``make bench`` runs it with smaller sizes). Environment: ``CCAT_TEST_POSTGRES_URL``,
``CCAT_TEST_REDIS_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from _ratios import Row, print_rows
from drain_bench import POSTGRES_URL, REDIS_URL, close_backend, transactions
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.cli._operator import open_site
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.demo.example import Base
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.observe.buffer_loss import BufferWatch
from ccat_buffering.write.models import utc_now
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_redis import RedisBackend

STATUS_BOUND = 1.5
"""Seconds: issue #23's bound for ``status`` with the main database 200 ms away."""


async def _drained_site(db_url: str, site: str, state_dir: Path, n: int) -> None:
    """A site whose worker buffered ``n`` transactions and drained them cleanly."""
    engine = create_engine(db_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    registry = ModelRegistry.from_base(Base)
    executor = TransactionExecutor(engine, registry)
    await executor.create_ledger()
    backend = RedisBackend.from_url(REDIS_URL, site=site)
    manager = TransactionManager(backend, registry=registry)
    watch = BufferWatch(engine, backend, state_dir=state_dir, save_every=0)
    await watch.create_tables()
    await manager.buffer_many(transactions(n, site))
    processor = BackgroundProcessor(manager, executor, batch_size=100)
    done = 0
    while done < n:
        done += await processor.run_once()
    await watch.check()  # the worker's look: the marker is kept on disk and in the database
    await backend.aclose()
    await engine.dispose()


async def status_rounds(
    db_url: str, rtt_ms: float, rounds: int, *, worker_host: bool
) -> tuple[list[float], list[str]]:
    """Seconds of each ``status`` through a relay of ``rtt_ms``, and the warnings seen.

    ``worker_host``: on the worker's host (its sightings on disk); otherwise on
    a host that has not looked before (the main database's sighting is read).
    """
    site = f"statusbench-{uuid.uuid4().hex[:8]}"
    url = make_url(db_url)
    relay = LoopbackRelay(url.host or "127.0.0.1", url.port or 5432, delay=rtt_ms / 2000)
    await relay.start()
    far = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    seconds: list[float] = []
    warnings: list[str] = []
    with tempfile.TemporaryDirectory() as worker_dir, tempfile.TemporaryDirectory() as mine:
        await _drained_site(db_url, site, Path(worker_dir), 50)
        settings = BufferingSettings(
            site_name=site, site_type="secondary", backend_url=REDIS_URL, database_url=far
        )
        try:
            for _ in range(rounds):
                # Each round is a new ``ccat-buffering status``: new connections.
                operator = open_site(
                    settings.model_copy(
                        update={"state_dir": Path(worker_dir if worker_host else mine)}
                    ),
                    replica=True,
                    database=True,
                    lean_database=True,  # as `ccat-buffering status` opens it
                )
                async with operator:
                    began = time.perf_counter()
                    health = await operator.health()
                    seconds.append(time.perf_counter() - began)
                warnings += health.warnings
        finally:
            await relay.stop()
            await close_backend(RedisBackend.from_url(REDIS_URL, site=site))
    return seconds, warnings


async def _fill(backend: RedisBackend, n: int, chunk: int = 500) -> None:
    """``n`` buffered transactions, through the backend's own ``buffer_many`` in chunks."""
    manager = TransactionManager(backend, registry=ModelRegistry.from_base(Base))
    for start in range(0, n, chunk):
        await manager.buffer_many(transactions(min(chunk, n - start), f"{backend.site}-{start}"))


async def audit_seconds(n: int) -> float:
    """Seconds ``audit_keys`` takes over a site of ``n`` buffered transactions."""
    site = f"auditbench-{uuid.uuid4().hex[:8]}"
    backend = RedisBackend.from_url(REDIS_URL, site=site)
    try:
        await _fill(backend, n)
        began = time.perf_counter()
        leaks = await backend.audit_keys()
        seconds = time.perf_counter() - began
        assert not leaks, f"{len(leaks)} leak(s) in a freshly filled site: {leaks[:3]}"
    finally:
        await close_backend(backend)
    return seconds


async def main(rtt_ms: float, rounds: int, sizes: list[int]) -> list[Row]:
    """Measure and print both tables; return their rows."""
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"ccat_bench_{uuid.uuid4().hex[:8]}"
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    rows, warnings = [], []
    try:
        for worker_host, where in ((True, "the worker's host"), (False, "another host")):
            seconds, seen = await status_rounds(db_url, rtt_ms, rounds, worker_host=worker_host)
            warnings += seen
            rows.append(
                Row.of(
                    f"status on {where}, main database {rtt_ms:.0f} ms away",
                    seconds,
                    unit="s",
                    baseline=f"bound {STATUS_BOUND} s",
                    ratio=[s / STATUS_BOUND for s in seconds],
                )
            )
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
    print(f"status after a clean drain, {rounds} rounds, {utc_now():%Y-%m-%d %H:%M} UTC")
    print_rows(rows)
    print(f"warnings: {sorted(set(warnings)) or 'none'}")
    audit_rows = []
    for n in sizes:
        per = [await audit_seconds(n) for _ in range(1 if n > 50_000 else rounds)]
        audit_rows.append(
            Row.of(
                f"status --audit, {n:,} buffered (s)",
                per,
                unit="s",
                baseline=f"{n / statistics.median(per):,.0f} tx/s",
            )
        )
    if audit_rows:
        print("audit_keys over a site of buffered transactions")
        print_rows(audit_rows)
    return rows + audit_rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", type=float, default=200.0, help="Round trip in ms.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--audit-sizes", default="30000,100000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.audit_sizes.split(",") if s]
    asyncio.run(main(args.rtt, args.rounds, sizes))
