"""Shared helpers of the test suite: a fake clock, a site on memory + SQLite."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.builder import TransactionBuilder
from ccat_buffering.database import create_engine
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
    obs = tx.create(
        ExecutedObsUnit,
        {
            "obs_unit_id": i,
            "status": "running",
            "start_time": dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
        },
    )
    tx.create(RawDataPackage, {"executed_obs_unit_id": obs.id, "name": name or f"pkg-{i}"})
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
    db_path: Path


async def make_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


@asynccontextmanager
async def memory_sqlite_site(tmp_path: Path, *, max_attempts: int = 3) -> AsyncIterator[Site]:
    """A site on the memory backend and a SQLite file, with a fake clock."""
    import random

    clock = FakeClock()
    backend = MemoryBackend(new_site_name(), clock=clock)
    db_path = tmp_path / "main.db"
    engine = create_engine(f"sqlite+aiosqlite:///{db_path}")
    await make_schema(engine)
    registry = ModelRegistry.from_base(Base)
    executor = TransactionExecutor(engine, registry)
    await executor.create_ledger()
    manager = TransactionManager(
        backend,
        registry=registry,
        retry_policy=RetryPolicy(max_attempts=max_attempts, base_delay=5.0, rng=random.Random(1)),
        clock=clock,
    )
    processor = BackgroundProcessor(manager, executor, clock=clock, outage_base_delay=1.0)
    try:
        yield Site(clock, backend, engine, registry, manager, executor, processor, db_path)
    finally:
        await engine.dispose()


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
