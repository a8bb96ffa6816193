"""Shared helpers of the test suite: a fake clock, a site on memory + SQLite."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.builder import TransactionBuilder
from ccat_buffering.database import create_engine, ledger_table
from ccat_buffering.demo._workload import add_observation
from ccat_buffering.demo.example import Base, ExecutedObsUnit, RawDataPackage
from ccat_buffering.executor import TransactionExecutor
from ccat_buffering.manager import TransactionManager
from ccat_buffering.models import Transaction
from ccat_buffering.processor import BackgroundProcessor
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.retry import RetryPolicy
from ccat_buffering.testing import new_site_name
from ccat_buffering_memory import MemoryBackend


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def observation(i: int, *, name: str | None = None) -> tuple[Transaction, str]:
    """A start_observation transaction: an obs unit and its package."""
    tx = TransactionBuilder("start_observation")
    obs, _package = add_observation(
        tx, i, name=name or f"pkg-{i}", start_time=dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    )
    assert obs.id is not None
    return tx.build(), obs.id


def orphan_package(i: int) -> Transaction:
    """A transaction the foreign key refuses every time."""
    tx = TransactionBuilder("orphan")
    tx.create(RawDataPackage, {"executed_obs_unit_id": f"missing-{i}", "name": f"orphan-{i}"})
    return tx.build()


@dataclass
class Site:
    clock: FakeClock
    backend: MemoryBackend
    engine: AsyncEngine
    registry: ModelRegistry
    manager: TransactionManager
    executor: TransactionExecutor
    processor: BackgroundProcessor
    db_path: Path | None
    url: str


async def units_in_order(engine: AsyncEngine) -> list[int]:
    """The example's obs unit ids as the main database stored them (insertion order)."""
    physical = "ctid" if engine.dialect.name == "postgresql" else "rowid"
    async with engine.connect() as conn:
        query = select(ExecutedObsUnit.obs_unit_id).order_by(literal_column(physical))
        return list((await conn.execute(query)).scalars().all())


async def ledger_count(engine: AsyncEngine) -> int:
    """Rows in the applied-transactions ledger."""
    async with engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(ledger_table))).scalar_one()
        )


def worker_env(site: str, database_url: str, **settings: str) -> dict[str, str]:
    """The environment of a ``ccat-buffering worker`` on the example schema, and no other settings.

    Args:
        site: The site's name.
        database_url: The main database.
        **settings: More settings, by their name without the prefix (``backend_url=...``).
    """
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CCAT_BUFFERING_")},
        "CCAT_BUFFERING_SITE_NAME": site,
        "CCAT_BUFFERING_DATABASE_URL": database_url,
        "CCAT_BUFFERING_MODELS": "ccat_buffering.demo.example:Base",
        **{f"CCAT_BUFFERING_{name.upper()}": value for name, value in settings.items()},
    }


async def make_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


async def build_site(
    url: str,
    *,
    max_attempts: int = 3,
    seed: int = 1,
    outage_base_delay: float | None = 1.0,
    ledger: bool = True,
    ledger_retention: float | None = None,
) -> Site:
    """The example site on the memory backend over the database at ``url``, with a fake clock.

    The caller disposes ``site.engine``; ``example_site`` does it for you. The schema and
    the ledger are created on the database. ``outage_base_delay=None`` keeps the
    processor's default.
    """
    import random

    clock = FakeClock()
    backend = MemoryBackend(new_site_name(), clock=clock)
    engine = create_engine(url)
    await make_schema(engine)
    registry = ModelRegistry.from_base(Base)
    executor = TransactionExecutor(
        engine, registry, ledger=ledger, site=backend.site, ledger_retention=ledger_retention
    )
    await executor.create_ledger()
    manager = TransactionManager(
        backend,
        registry=registry,
        retry_policy=RetryPolicy(
            max_attempts=max_attempts, base_delay=5.0, rng=random.Random(seed)
        ),
        clock=clock,
    )
    if outage_base_delay is None:
        processor = BackgroundProcessor(manager, executor, clock=clock)
    else:
        processor = BackgroundProcessor(
            manager, executor, clock=clock, outage_base_delay=outage_base_delay
        )
    database = engine.url.database
    db_path = Path(database) if url.startswith("sqlite") and database else None
    return Site(clock, backend, engine, registry, manager, executor, processor, db_path, url)


@asynccontextmanager
async def example_site(url: str, **options: Any) -> AsyncIterator[Site]:
    """``build_site(url, **options)``, its engine disposed on the way out."""
    site = await build_site(url, **options)
    try:
        yield site
    finally:
        await site.engine.dispose()


def sqlite_url(tmp_path: Path) -> str:
    """The URL of a SQLite file ``main.db`` in ``tmp_path``."""
    return f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"


@asynccontextmanager
async def memory_sqlite_site(tmp_path: Path, *, max_attempts: int = 3) -> AsyncIterator[Site]:
    """A site on the memory backend and a SQLite file, with a fake clock."""
    async with example_site(sqlite_url(tmp_path), max_attempts=max_attempts) as site:
        yield site


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A real ``ccat-buffering worker`` on the example schema, in a process of its own."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ccat_buffering",
            "worker",
            "--models",
            "ccat_buffering.demo.example:Base",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def make_conflict(site: Any, i: int) -> str:
    """A rejected conflict at ``site`` (a coordinator): its update of a unit the main site changed.

    Returns:
        The conflicted transaction's id.
    """
    from sqlalchemy import insert, update

    unit = f"unit-{i}"
    start = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    async with site.engine.begin() as conn:
        await conn.execute(
            insert(ExecutedObsUnit).values(id=unit, obs_unit_id=i, status="new", start_time=start)
        )
    tx = TransactionBuilder("edit", registry=site.registry)
    tx.update(ExecutedObsUnit, unit, {"status": f"site-{i}"})
    status = await site.submit(tx.build())
    async with site.engine.begin() as conn:
        await conn.execute(
            update(ExecutedObsUnit).where(ExecutedObsUnit.id == unit).values(status=f"main-{i}")
        )
    # A worker of its own: the site's processor would publish its report (stopped).
    worker = BackgroundProcessor(site.manager, site.executor)
    assert await worker.run_once() == 0  # conflicted: nothing committed
    await site.manager.backend.lease.release(worker.holder)  # the next worker takes it
    return str(status.transaction_id)
