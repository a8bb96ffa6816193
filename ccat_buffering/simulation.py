"""A site's whole day in one process: an outage, a backlog, a drain, a confirmation.

:func:`simulate` runs the scenario the library exists for against real parts
(a backend, a database through SQLAlchemy, the processor and the replication
tracker) and counts the result from the database and the stores, not from
what it meant to do.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import func, select

from ccat_buffering.builder import TransactionBuilder
from ccat_buffering.coordinator import BufferingCoordinator
from ccat_buffering.example import Base, ExecutedObsUnit, RawDataFile, RawDataPackage
from ccat_buffering.executor import ledger_table
from ccat_buffering.models import Transaction, TransactionState
from ccat_buffering.reads import Reads
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.settings import BufferingSettings

__all__ = ["SimulationSummary", "simulate"]

Progress = Callable[[str, int, int], None]


class SimulationSummary(BaseModel):
    """What the simulation found, counted from the database and the stores.

    Attributes:
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
        outage_pauses: Batches returned to the queue while the database was down.
        attempts_during_outage: Attempts counted against transactions during
            the outage (must be 0).
        caches_left: Cached records left after everything replicated.
        seconds: Wall time of the whole run.
    """

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
    outage_pauses: int
    attempts_during_outage: int
    caches_left: int
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


def _observation(i: int, rng: random.Random) -> tuple[Transaction, Transaction, str, list[str]]:
    start = TransactionBuilder("start_observation")
    obs = start.create(
        ExecutedObsUnit,
        {
            "obs_unit_id": i,
            "status": "running",
            "start_time": dt.datetime.now(dt.UTC),
            "mean_pwv": Decimal(f"{rng.uniform(0.2, 2.0):.3f}"),
        },
    )
    package = start.create(RawDataPackage, {"executed_obs_unit_id": obs.id, "name": f"pkg-{i:06d}"})
    finish = TransactionBuilder("finish_observation")
    paths = [f"/data/{i:06d}/scan-{k}.fits" for k in range(2)]
    finish.bulk_create(
        RawDataFile,
        [
            {"raw_data_package_id": package.id, "path": p, "size_bytes": 1024 * (k + 1)}
            for k, p in enumerate(paths)
        ],
    )
    finish.update(
        ExecutedObsUnit, obs.id, {"status": "finished", "end_time": dt.datetime.now(dt.UTC)}
    )
    assert obs.id is not None
    return start.build(), finish.build(), obs.id, paths


def _poison(i: int) -> Transaction:
    # A file whose package does not exist: the foreign key refuses it every time.
    tx = TransactionBuilder("register_orphan_file")
    tx.bulk_create(
        RawDataFile,
        [{"raw_data_package_id": f"missing-{i}", "path": f"/orphan/{i}", "size_bytes": 1}],
    )
    return tx.build()


async def simulate(
    observations: int = 1000,
    *,
    poison: int = 2,
    backend_url: str = "memory://",
    database_url: str | None = None,
    site: str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> SimulationSummary:
    """Buffer while the database is unreachable, restore it, drain, confirm, count.

    With the default SQLite database the outage is real: the database file's
    directory is renamed away while the site buffers, so every connection
    fails as it would with the link down.

    Args:
        observations: Observations to record; each is two transactions.
        poison: Transactions built to violate a foreign key.
        backend_url: Where to buffer.
        database_url: The main database; a new SQLite file when ``None``.
        site: The site's name; a new ``simulated-<random>`` one by default, so
            that runs against a shared Redis never meet each other's keys.
        seed: Seed of the random values.
        progress: Called as ``progress(phase, done, total)``.

    Returns:
        The counts.
    """
    began = time.perf_counter()
    rng = random.Random(seed)
    report = progress or (lambda phase, done, total: None)
    with tempfile.TemporaryDirectory(prefix="ccat-buffering-sim-") as tmp:
        online = Path(tmp) / "main"
        offline = Path(tmp) / "main-unreachable"
        online.mkdir()
        url = database_url or f"sqlite+aiosqlite:///{online / 'operations.db'}"
        settings = BufferingSettings(
            site_name=site or f"simulated-{uuid.uuid4().hex[:8]}",
            site_type="secondary",
            backend_url=backend_url,
            database_url=url,
            retry_base_delay=0.01,
            retry_max_delay=0.05,
            outage_base_delay=0.01,
            outage_max_delay=0.05,
            replication_poll_interval=0.01,
        )
        registry = ModelRegistry.from_base(Base)
        async with BufferingCoordinator.from_settings(
            settings, registry=registry, start=False
        ) as site_:
            async with site_.engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            await site_.prepare_database()
            await site_.engine.dispose()
            simulated_outage = database_url is None
            if simulated_outage:
                os.rename(online, offline)

            total = observations * 2 + poison
            expected: list[tuple[str, list[str], str, str]] = []
            buffered = 0
            poison_at = (
                {rng.randrange(observations) for _ in range(poison)} if observations else set()
            )
            poison_left = poison
            for i in range(observations):
                start, finish, obs_id, paths = _observation(i, rng)
                for tx in (start, finish):
                    status = await site_.submit(tx)
                    buffered += status.state is TransactionState.BUFFERED
                expected.append((obs_id, paths, start.transaction_id, finish.transaction_id))
                if i in poison_at and poison_left:
                    status = await site_.submit(_poison(i))
                    buffered += status.state is TransactionState.BUFFERED
                    poison_left -= 1
                if i % 100 == 0:
                    report("buffering", buffered, total)
            while poison_left:
                await site_.submit(_poison(observations + poison_left))
                buffered += 1
                poison_left -= 1
            report("buffering", buffered, total)

            # The embedded site's only database is the unreachable one, so read
            # what the site believes from its buffered records alone.
            buffered_view = Reads(site_.backend.cache, registry)
            sample = expected[:: max(1, len(expected) // 20)]
            visible = 0
            for obs_id, _, _, _ in sample:
                record = await buffered_view.get("ExecutedObsUnit", obs_id)
                visible += record is not None and record["status"] == "finished"

            pauses = 0
            if simulated_outage:
                for _ in range(3):
                    await site_.processor.run_once()
                pauses = site_.processor.counters.outages
            attempts = 0
            for state in TransactionState:
                ids = await site_.backend.status.ids(state)
                statuses = await site_.backend.status.get_many(ids)
                attempts += sum(s.attempts for s in statuses if s is not None)
            if simulated_outage:
                os.rename(offline, online)

            drained = 0
            deadline = time.monotonic() + max(60.0, total / 50)
            while time.monotonic() < deadline:
                drained += await site_.processor.run_once()
                stats = await site_.backend.buffer.stats()
                report("draining", total - stats.depth - stats.in_flight, total)
                if stats.depth == 0 and stats.in_flight == 0:
                    break
                if stats.held_until is not None:
                    await asyncio.sleep(0.01)
            while time.monotonic() < deadline:
                result = await site_.tracker.poll_once()
                if result.pending == 0:
                    break
                await asyncio.sleep(settings.replication_poll_interval)

            async with site_.engine.connect() as conn:
                ledger_ids = set(
                    (await conn.execute(select(ledger_table.c.transaction_id))).scalars()
                )
                file_rows = dict(
                    (
                        await conn.execute(
                            select(RawDataFile.path, func.count()).group_by(RawDataFile.path)
                        )
                    ).all()
                )
                units = dict(
                    (await conn.execute(select(ExecutedObsUnit.id, ExecutedObsUnit.status))).all()
                )
                packages = set(
                    (await conn.execute(select(RawDataPackage.executed_obs_unit_id))).scalars()
                )
            lost = twice = committed = 0
            for obs_id, paths, start_id, finish_id in expected:
                committed += (start_id in ledger_ids) + (finish_id in ledger_ids)
                copies = [file_rows.get(p, 0) for p in paths]
                # Each transaction is lost if any row it wrote is missing.
                lost += obs_id not in units or obs_id not in packages
                lost += units.get(obs_id) != "finished" or any(c == 0 for c in copies)
                twice += any(c > 1 for c in copies)
            counts = await site_.backend.status.counts()
            caches = 0
            for model in registry:
                caches += len(await site_.backend.cache.list(model))
            stats = await site_.backend.buffer.stats()
            return SimulationSummary(
                transactions=total,
                buffered=buffered,
                committed=committed,
                replicated=counts[TransactionState.REPLICATED],
                dead_lettered=stats.dead_letters,
                poison=poison,
                lost=lost,
                applied_twice=twice,
                visible_during_outage=visible,
                sampled=len(sample),
                outage_pauses=pauses,
                attempts_during_outage=attempts,
                caches_left=caches,
                seconds=round(time.perf_counter() - began, 3),
            )
