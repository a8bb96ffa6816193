"""A site's whole day in one process: an outage, a backlog, a drain, a confirmation.

:func:`simulate` runs the scenario the library exists for against real parts
(a backend, a database through SQLAlchemy, the processor and the replication
tracker) and counts the result from the database and the stores, not from
what it meant to do.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.conflicts.log import conflict_metadata
from ccat_buffering.demo._outage import Outage
from ccat_buffering.demo._workload import SCHEMAS, Schema
from ccat_buffering.drain.database import create_engine, ledger_table
from ccat_buffering.read.reads import Reads
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["SimulationSummary", "simulate"]

Progress = Callable[[str, int, int], None]


class SimulationSummary(BaseModel):
    """What the simulation found, counted from the database and the stores.

    Attributes:
        site: The simulated site's name, for ``ccat-buffering status`` afterwards.
        transactions: Transactions submitted (good and poison).
        buffered: Transactions the site acknowledged as buffered.
        committed: Good transactions found in the database's ledger.
        replicated: Transactions whose status is ``replicated``.
        dead_lettered: Transactions in the dead-letter store.
        poison: Transactions built to fail (they must all be dead-lettered).
        lost: Acknowledged good transactions whose rows are missing.
        applied_twice: Good transactions whose rows appear more than once.
        visible_during_outage: Records read back through ``reads`` before the
            database was reachable, out of ``sampled``.
        sampled: Records checked during the outage.
        outage: How the outage was made.
        outage_pauses: Batches returned to the queue while the database was down.
        attempts_during_outage: Attempts counted against transactions during
            the outage (must be 0).
        caches_left: Cached records left after everything replicated.
        commit_to_visible_median: Median seconds from commit to ``replicated``.
        seconds: Wall time of the whole run.
    """

    site: str
    transactions: int
    buffered: int
    committed: int
    replicated: int
    dead_lettered: int
    poison: int
    lost: int
    applied_twice: int
    visible_during_outage: int
    sampled: int
    outage: str
    outage_pauses: int
    attempts_during_outage: int
    caches_left: int
    commit_to_visible_median: float | None
    seconds: float

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing twice, every poison parked, everything else replicated."""
        return (
            self.lost == 0
            and self.applied_twice == 0
            and self.dead_lettered == self.poison
            and self.committed == self.transactions - self.poison
            and self.replicated == self.committed
            and self.caches_left == 0
        )


async def simulate(
    observations: int = 1000,
    *,
    poison: int = 2,
    backend_url: str = "memory://",
    database_url: str | None = None,
    replica_url: str | None = None,
    site: str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    schema: Literal["text", "uuid"] = "text",
    keep: bool = False,
) -> SimulationSummary:
    """Buffer while the database is unreachable, restore it, drain, confirm, count.

    The outage is real: a SQLite file's directory is renamed away, and a
    networked database is reached through a loopback relay that is cut, so
    every connection fails as it would with the link down. The example tables
    and the ledger are created if missing; names carry a run id, so runs
    against the same database never collide.

    Args:
        observations: Observations to record; each is two transactions.
        poison: Transactions built to violate a foreign key.
        backend_url: Where to buffer.
        database_url: The main database; a new SQLite file when ``None``.
        replica_url: The site's streaming replica, for LSN tracking.
        site: The site's name; a new ``simulated-<random>`` one by default, so
            that runs against a shared Redis never meet each other's keys.
        seed: Seed of the random values.
        progress: Called as ``progress(phase, done, total)``.
        schema: ``"text"`` for the example schema of text and integer keys,
            ``"uuid"`` for the one of native UUID keys and JSON-request values.
        keep: Leave the site's keys in the backend (by default a Redis
            backend's keys of the site are deleted at the end, so runs do
            not pile up thousands of keys in a shared Redis).

    Returns:
        The counts.
    """
    began = time.perf_counter()
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    report = progress or (lambda phase, done, total: None)
    with tempfile.TemporaryDirectory(prefix="ccat-buffering-sim-") as tmp:
        outage = Outage(database_url, Path(tmp))
        await outage.begin()
        try:
            return await _run(
                outage, observations, poison, backend_url, replica_url,
                site or f"simulated-{run}", run, rng, report, began, SCHEMAS[schema], keep,
            )  # fmt: skip
        finally:
            await outage.end()


async def _run(
    outage: Outage,
    observations: int,
    poison: int,
    backend_url: str,
    replica_url: str | None,
    site_name: str,
    run: str,
    rng: random.Random,
    report: Progress,
    began: float,
    schema: Schema,
    keep: bool = False,
) -> SimulationSummary:
    settings = BufferingSettings(
        site_name=site_name,
        site_type="secondary",
        backend_url=backend_url,
        database_url=outage.site_url,
        replica_url=replica_url,
        retry_base_delay=0.01,
        retry_max_delay=0.05,
        outage_base_delay=0.01,
        outage_max_delay=0.05,
        replication_poll_interval=0.01,
    )
    registry = ModelRegistry.from_base(schema.base)
    direct = create_engine(outage.direct_url)
    async with direct.begin() as conn:
        await conn.run_sync(schema.base.metadata.create_all)
        await conn.run_sync(ledger_table.metadata.create_all)
        await conn.run_sync(conflict_metadata.create_all)
    async with BufferingCoordinator.from_settings(settings, registry=registry, start=False) as site:
        await outage.cut()

        total = observations * 2 + poison
        expected: list[tuple[Any, list[str], str, str]] = []
        buffered = 0
        poison_at = sorted(rng.sample(range(max(observations, 1)), min(poison, observations)))
        poison_txs = [schema.poison(i, run) for i in range(poison)]
        for i in range(observations):
            start, finish, obs_id, paths = schema.observation(i, run, rng)
            for tx in (start, finish):
                buffered += (await site.submit(tx)).state is TransactionState.BUFFERED
            expected.append((obs_id, paths, start.transaction_id, finish.transaction_id))
            if poison_at and i == poison_at[0]:
                poison_at.pop(0)
                buffered += (await site.submit(poison_txs.pop())).state is TransactionState.BUFFERED
            if i % 100 == 0:
                report("buffering", buffered, total)
        for tx in poison_txs:
            buffered += (await site.submit(tx)).state is TransactionState.BUFFERED
        report("buffering", buffered, total)

        # Without a replica, the embedded site's only database is the one that is
        # down: what the site believes then comes from its buffered records alone.
        view = site.reads if replica_url else Reads(site.backend.cache, registry)
        sample = expected[:: max(1, len(expected) // 20)]
        visible = 0
        for obs_id, _, _, _ in sample:
            record = await view.get(schema.unit, obs_id)
            visible += record is not None and record["status"] == "finished"

        pauses = attempts = 0
        if outage.kind != "none":
            for _ in range(3):
                await site.processor.run_once()
            pauses = site.processor.counters.outages
        for state in TransactionState:
            statuses = await site.backend.status.get_many(await site.backend.status.ids(state))
            attempts += sum(s.attempts for s in statuses if s is not None)
        await outage.restore()

        deadline = time.monotonic() + max(120.0, total / 20)
        # The tracker confirms while the processor drains, as in a worker.
        tracking = asyncio.create_task(site.tracker.run())
        try:
            while time.monotonic() < deadline:
                await site.processor.run_once()
                stats = await site.backend.buffer.stats()
                report("draining", total - stats.depth - stats.in_flight, total)
                if stats.depth == 0 and stats.in_flight == 0:
                    break
                if stats.held_until is not None:
                    await asyncio.sleep(0.01)
            while time.monotonic() < deadline:
                if not await site.backend.status.ids(TransactionState.COMMITTED, limit=1):
                    break
                await asyncio.sleep(settings.replication_poll_interval)
        finally:
            site.tracker.stop()
            await tracking

        summary = await _count(site, direct, expected, registry, schema)
        stats = await site.backend.buffer.stats()
        replicated_ids = await site.backend.status.ids(TransactionState.REPLICATED)
        replicated = await site.backend.status.get_many(replicated_ids)
        delays = [
            (s.replicated_at - s.committed_at).total_seconds()
            for s in replicated
            if s is not None and s.replicated_at and s.committed_at
        ]
        if not keep:
            await _forget_site(site.backend)
    await direct.dispose()
    return SimulationSummary(
        site=site_name,
        transactions=total,
        buffered=buffered,
        committed=summary["committed"],
        replicated=len(replicated_ids),
        dead_lettered=stats.dead_letters,
        poison=poison,
        lost=summary["lost"],
        applied_twice=summary["twice"],
        visible_during_outage=visible,
        sampled=len(sample),
        outage=outage.kind,
        outage_pauses=pauses,
        attempts_during_outage=attempts,
        caches_left=summary["caches"],
        commit_to_visible_median=round(statistics.median(delays), 4) if delays else None,
        seconds=round(time.perf_counter() - began, 3),
    )


async def _forget_site(backend: object) -> int:
    """Delete a Redis backend's keys of the simulated site; other backends keep nothing.

    Every key of a site matches its backend's ``keys.pattern()``
    (``site:{<site>}:*``), and they share one Cluster slot.
    """
    client = getattr(backend, "client", None)
    pattern = getattr(getattr(backend, "keys", None), "pattern", None)
    if client is None or pattern is None:
        return 0
    found = [key async for key in client.scan_iter(match=pattern(), count=1000)]
    for start in range(0, len(found), 500):
        await client.unlink(*found[start : start + 500])
    return len(found)


async def _count(
    site: BufferingCoordinator,
    engine: AsyncEngine,
    expected: list[tuple[Any, list[str], str, str]],
    registry: ModelRegistry,
    schema: Schema,
) -> dict[str, int]:
    unit, child, file = schema.unit, schema.child, schema.file
    child_fk = getattr(child, schema.child_fk)
    ids = [obs_id for obs_id, _, _, _ in expected]
    paths = [p for _, ps, _, _ in expected for p in ps]
    tx_ids = [t for _, _, a, b in expected for t in (a, b)]
    async with engine.connect() as conn:
        ledger_ids: set[str] = set()
        units: dict[Any, str] = {}
        packages: set[Any] = set()
        file_rows: dict[str, int] = {}
        for start in range(0, max(len(ids), 1), 500):
            chunk = ids[start : start + 500]
            units.update(
                (await conn.execute(
                    select(unit.id, unit.status).where(unit.id.in_(chunk))
                )).all()
            )  # fmt: skip
            packages.update(
                (await conn.execute(
                    select(child_fk).where(child_fk.in_(chunk))
                )).scalars()
            )  # fmt: skip
        for start in range(0, max(len(paths), 1), 500):
            chunk = paths[start : start + 500]
            file_rows.update(
                (await conn.execute(
                    select(file.path, func.count()).where(
                        file.path.in_(chunk)).group_by(file.path)
                )).all()
            )  # fmt: skip
        for start in range(0, max(len(tx_ids), 1), 500):
            chunk = tx_ids[start : start + 500]
            column = ledger_table.c.transaction_id
            ledger_ids.update(
                (await conn.execute(select(column).where(column.in_(chunk)))).scalars()
            )
    lost = twice = committed = 0
    for obs_id, obs_paths, start_id, finish_id in expected:
        committed += (start_id in ledger_ids) + (finish_id in ledger_ids)
        copies = [file_rows.get(p, 0) for p in obs_paths]
        # Each transaction is lost if any row it wrote is missing.
        lost += obs_id not in units or obs_id not in packages
        lost += units.get(obs_id) != "finished" or any(c == 0 for c in copies)
        twice += any(c > 1 for c in copies)
    caches = 0
    for model in registry:
        caches += len(await site.backend.cache.list(model))
    return {"committed": committed, "lost": lost, "twice": twice, "caches": caches}
