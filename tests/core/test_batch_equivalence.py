"""A batch gives exactly the outcome of applying its transactions one by one.

Hypothesis draws sequences of creates, updates and deletes over small pools of
keys and names (so that duplicate keys, missing parents, unique names and rows
created by later transactions all happen), applies each sequence at batch
sizes 1, 7 and 100, and compares the databases and every transaction's outcome.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pg import fresh_database
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool

from ccat_buffering.conflicts.log import conflict_metadata
from ccat_buffering.demo.example import Base, ExecutedObsUnit, RawDataFile, RawDataPackage
from ccat_buffering.drain.database import create_engine, ledger_metadata
from ccat_buffering.drain.executor import Outcome, TransactionExecutor
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.registry import ModelRegistry

REGISTRY = ModelRegistry.from_base(Base)
START = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
OBS = ["o1", "o2", "o3", "o4", "o5"]
PACKAGES = ["p1", "p2", "p3", "p4", "p5", "p6"]
NAMES = ["n1", "n2", "n3"]

obs = st.sampled_from(OBS)
package = st.sampled_from(PACKAGES)
name = st.sampled_from(NAMES)

create_obs = st.tuples(st.just("create_obs"), obs, st.integers(0, 3))
create_package = st.tuples(st.just("create_package"), package, obs, name)
# Creates come more often than the rest, deletes least (a delete keeps the whole
# batch from being grouped), so that grouped batches that succeed are common.
step = st.one_of(
    create_obs,
    create_obs,
    create_package,
    create_package,
    st.tuples(st.just("bulk_packages"), st.lists(st.tuples(package, obs, name), max_size=3)),
    st.tuples(st.just("create_file"), package, st.integers(1, 9)),
    st.tuples(st.just("update_package"), package, obs),
    st.tuples(st.just("rename_package"), package, name),
    st.tuples(st.just("update_obs"), obs, st.integers(0, 3)),
    st.tuples(st.just("delete_package"), package) | st.tuples(st.just("delete_obs"), obs),
)
transactions = st.lists(st.lists(step, min_size=1, max_size=3), min_size=1, max_size=24)


def build(steps: list[tuple[Any, ...]], number: int) -> Transaction:
    tx = TransactionBuilder(f"t{number}")
    for kind, *args in steps:
        if kind == "create_obs":
            tx.create(
                ExecutedObsUnit,
                {"id": args[0], "obs_unit_id": args[1], "status": "s", "start_time": START},
            )
        elif kind == "create_package":
            tx.create(
                RawDataPackage, {"id": args[0], "executed_obs_unit_id": args[1], "name": args[2]}
            )
        elif kind == "bulk_packages" and args[0]:
            tx.bulk_create(
                RawDataPackage,
                [{"id": p, "executed_obs_unit_id": o, "name": n} for p, o, n in args[0]],
            )
        elif kind == "create_file":
            tx.create(
                RawDataFile,
                {"raw_data_package_id": args[0], "path": f"/{args[1]}", "size_bytes": args[1]},
            )
        elif kind == "update_package":
            tx.update(RawDataPackage, args[0], {"executed_obs_unit_id": args[1]})
        elif kind == "rename_package":
            tx.update(RawDataPackage, args[0], {"name": args[1]})
        elif kind == "update_obs":
            tx.update(ExecutedObsUnit, args[0], {"obs_unit_id": args[1]})
        elif kind == "delete_package":
            tx.delete(RawDataPackage, args[0])
        elif kind == "delete_obs":
            tx.delete(ExecutedObsUnit, args[0])
    if not tx._steps:
        tx.update(ExecutedObsUnit, "o1", {"obs_unit_id": 0})
    return tx.build()


def summary(outcome: Outcome) -> tuple[bool, bool, str | None]:
    return outcome.applied, outcome.already_applied, type(outcome.error).__name__


async def apply(
    batch: list[Transaction],
    size: int,
    url: str | None = None,
    base: Any = Base,
    registry: ModelRegistry = REGISTRY,
) -> tuple[list[Any], list[Any]]:
    """Apply ``batch`` in batches of ``size`` on a fresh schema; outcomes and every row."""
    if url is None:
        engine = create_engine("sqlite+aiosqlite:///:memory:", poolclass=StaticPool)
    else:
        engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(base.metadata.drop_all)
            await conn.run_sync(ledger_metadata.drop_all)
            await conn.run_sync(conflict_metadata.drop_all)
            await conn.run_sync(base.metadata.create_all)
        executor = TransactionExecutor(engine, registry)
        await executor.create_ledger()
        outcomes: list[Any] = []
        pending = list(batch)
        while pending:
            # A batch stops at its first failure; what waits behind it is sent
            # again in the next batch, as the processor does once that failure
            # is settled (here: taken as final, like a dead letter).
            result = await executor.execute_batch(pending[:size])
            settled = next((i for i, o in enumerate(result.outcomes) if o.waiting), None)
            if settled is None:
                settled = len(result.outcomes)
            assert settled > 0
            outcomes.extend(summary(o) for o in result.outcomes[:settled])
            pending = pending[settled:]
        rows: list[Any] = []
        async with engine.connect() as conn:
            for table in base.metadata.sorted_tables:
                result = await conn.execute(select(table).order_by(*table.columns))
                rows.append([tuple(r) for r in result])
        return outcomes, rows
    finally:
        await engine.dispose()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(transactions)
@example([[("create_package", "p1", "o1", "n1")], [("create_obs", "o1", 1)]])
@example([[("update_package", "p1", "o2")], [("create_package", "p1", "o1", "n1")]])
@example(
    [
        [("create_obs", "o1", 0), ("create_package", "p1", "o1", "n1")],
        [("create_obs", "o2", 1)],
        [("update_package", "p1", "o3")],
        [("create_obs", "o3", 2)],
    ]
)
def test_a_batch_gives_the_outcome_of_one_by_one(drawn: list[list[tuple[Any, ...]]]) -> None:
    batch = [build(steps, i) for i, steps in enumerate(drawn)]

    async def run() -> None:
        reference = await apply(batch, 1)
        for size in (7, 100):
            assert await apply(batch, size) == reference, f"batch size {size} differs"

    asyncio.run(run())


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """One fresh PostgreSQL database for every example (tables made anew each time)."""
    context = fresh_database()
    loop = asyncio.new_event_loop()
    try:
        url = loop.run_until_complete(context.__aenter__())
        yield url
        loop.run_until_complete(context.__aexit__(None, None, None))
    finally:
        loop.close()


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(transactions)
@example([[("create_package", "p1", "o1", "n1")], [("create_obs", "o1", 1)]])
def test_a_batch_gives_the_outcome_of_one_by_one_on_postgresql(
    postgres_url: str, drawn: list[list[tuple[Any, ...]]]
) -> None:
    batch = [build(steps, i) for i, steps in enumerate(drawn)]

    async def run() -> None:
        reference = await apply(batch, 1, postgres_url)
        for size in (7, 100):
            assert await apply(batch, size, postgres_url) == reference, f"size {size} differs"

    asyncio.run(run())


class _Shapes(DeclarativeBase):
    pass


class Person(_Shapes):
    """Single-table inheritance: two classes, one table."""

    __tablename__ = "person"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(16))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}  # noqa: RUF012


class Employee(Person):
    __mapper_args__ = {"polymorphic_identity": "employee"}  # noqa: RUF012


class Badge(_Shapes):
    __tablename__ = "badge"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    person_id: Mapped[str] = mapped_column(ForeignKey("person.id"))


class Parent(_Shapes):
    __tablename__ = "parent"
    code: Mapped[str] = mapped_column(String(16), primary_key=True)


class Child(_Shapes):
    __tablename__ = "child"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    parent_code: Mapped[str] = mapped_column(ForeignKey("parent.code", onupdate="CASCADE"))


SHAPES = ModelRegistry.from_base(_Shapes)


def _tx(*steps: tuple[str, Any, Any]) -> Transaction:
    tx = TransactionBuilder("shape")
    for kind, model, values in steps:
        if kind == "create":
            tx.create(model, values)
        else:
            key, data = values
            tx.update(model, key, data)
    return tx.build()


SEQUENCES = {
    "two classes of one table": [
        _tx(("create", Person, {"id": "p1", "name": "a"})),
        _tx(("create", Employee, {"id": "e1", "name": "b"})),
    ],
    "a badge of an employee created later": [
        _tx(("create", Badge, {"id": "b1", "person_id": "e1"})),
        _tx(("create", Person, {"id": "p1", "name": "a"})),
        _tx(("create", Employee, {"id": "e1", "name": "b"})),
    ],
    "a key change that cascades": [
        _tx(("create", Parent, {"code": "p"})),
        _tx(("update", Parent, ("p", {"code": "p2"}))),
        _tx(("create", Child, {"id": "c", "parent_code": "p"})),
    ],
}


@pytest.mark.parametrize("name", SEQUENCES)
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_inheritance_and_cascades_give_the_outcome_of_one_by_one(
    name: str, database: str
) -> None:
    batch = SEQUENCES[name]
    async with AsyncExitStack() as stack:
        url = None if database == "sqlite" else await stack.enter_async_context(fresh_database())
        reference = await apply(batch, 1, url, _Shapes, SHAPES)
        assert await apply(batch, len(batch), url, _Shapes, SHAPES) == reference
