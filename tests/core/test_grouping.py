"""Grouped batches: the same result as one by one, or no grouping at all."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

from sqlalchemy import select

from ccat_buffering.demo.example import Base, ExecutedObsUnit, RawDataFile, RawDataPackage
from ccat_buffering.drain._grouping import plan
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.registry import ModelRegistry

from support import make_schema

REGISTRY = ModelRegistry.from_base(Base)
START = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def _start(i: int) -> tuple[Transaction, str, str]:
    tx = TransactionBuilder("start")
    obs = tx.create(ExecutedObsUnit, {"obs_unit_id": i, "status": "running", "start_time": START})
    pkg = tx.create(RawDataPackage, {"executed_obs_unit_id": obs.id, "name": f"p{i}"})
    assert obs.id and pkg.id
    return tx.build(), obs.id, pkg.id


def test_children_are_inserted_after_their_parents() -> None:
    # Steps name the child table first in the second transaction; FK order wins.
    first, _, pkg_id = _start(1)
    child_first = TransactionBuilder("files")
    child_first.bulk_create(
        RawDataFile, [{"raw_data_package_id": pkg_id, "path": "/a", "size_bytes": 1}]
    )
    grouped = plan([first, child_first.build()], REGISTRY)
    assert grouped is not None
    assert [model for model, _ in grouped.inserts] == [
        "ExecutedObsUnit",
        "RawDataPackage",
        "RawDataFile",
    ]


def test_batches_that_grouping_could_change_are_not_grouped() -> None:
    first, obs_id, _ = _start(1)
    deleting = TransactionBuilder("delete")
    deleting.delete(RawDataPackage, "p-1")
    assert plan([first, deleting.build()], REGISTRY) is None
    referring = TransactionBuilder("ref")
    f = referring.create(RawDataFile, {"raw_data_package_id": "x", "path": "/x", "size_bytes": 1})
    referring.update(ExecutedObsUnit, obs_id, {"obs_unit_id": f.ref("id")})
    assert plan([first, referring.build()], REGISTRY) is None
    early = TransactionBuilder("finish")
    early.update(ExecutedObsUnit, "later-id", {"status": "done"})
    late = TransactionBuilder("start")
    late.create(
        ExecutedObsUnit, {"id": "later-id", "obs_unit_id": 2, "status": "x", "start_time": START}
    )
    # In order, the update finds no row; grouped, it would: not grouped.
    assert plan([early.build(), late.build()], REGISTRY) is None
    assert plan([late.build(), early.build()], REGISTRY) is not None


async def _state(engine: object) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:  # type: ignore[attr-defined]
        units = (
            await conn.execute(
                select(ExecutedObsUnit.id, ExecutedObsUnit.status).order_by(ExecutedObsUnit.id)
            )
        ).all()
        files = (
            await conn.execute(
                select(RawDataFile.path, RawDataFile.size_bytes).order_by(RawDataFile.path)
            )
        ).all()
    return [*units, *files]


async def test_grouped_and_one_by_one_leave_the_same_database(tmp_path: Path) -> None:
    rng = random.Random(5)
    batch: list[Transaction] = []
    known: list[tuple[str, str]] = []
    for i in range(60):
        if known and rng.random() < 0.4:
            obs_id, pkg_id = rng.choice(known)
            tx = TransactionBuilder("more")
            tx.update(ExecutedObsUnit, obs_id, {"status": f"s{i}"})
            tx.bulk_create(
                RawDataFile, [{"raw_data_package_id": pkg_id, "path": f"/{i}", "size_bytes": i}]
            )
            batch.append(tx.build())
        else:
            tx, obs_id, pkg_id = _start(i)
            known.append((obs_id, pkg_id))
            batch.append(tx)
    assert plan(batch, REGISTRY) is not None
    states = []
    for name, size in (("grouped", 100), ("single", 1)):
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / name}.db")
        await make_schema(engine)
        executor = TransactionExecutor(engine, REGISTRY)
        await executor.create_ledger()
        for start in range(0, len(batch), size):
            result = await executor.execute_batch(batch[start : start + size])
            assert all(o.applied for o in result.outcomes)
        states.append(await _state(engine))
        await engine.dispose()
    assert states[0] == states[1]
