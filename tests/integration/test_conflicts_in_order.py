"""Conflicts, order through failures and generated values, in one batch (issues 19 and 21).

A conflicted transaction left the queue for the conflict log: it is not a
retried failure, so what follows it applies in the same batch, while a failure
that is retried still holds everything after it. Creates whose key the
database makes come back through ``RETURNING`` beside compare-and-set updates,
on SQLite, asyncpg and psycopg's pipeline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pg import fresh_database
from sqlalchemy import CheckConstraint, Identity, Integer, String, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.conflicts.log import unresolved_of
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.registry import ModelRegistry

from support import sqlite_url


class MixBase(DeclarativeBase):
    pass


class Item(MixBase):
    __tablename__ = "mix_item"
    __table_args__ = (CheckConstraint("qty >= 0", name="mix_item_qty"),)

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    qty: Mapped[int] = mapped_column(Integer, server_default="0")


REGISTRY = ModelRegistry.from_base(MixBase)
DATABASES = ["sqlite", "asyncpg", "psycopg"]


@asynccontextmanager
async def _executor(kind: str, tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, Any]]:
    """A main database with the schema, the ledger and the conflict log; its executor."""
    if kind == "sqlite":
        url = sqlite_url(tmp_path)
        async with _built(url) as built:
            yield built
        return
    async with (
        fresh_database() as url,
        _built(f"postgresql+{kind}" + url[url.index("://") :]) as built,
    ):
        yield built


@asynccontextmanager
async def _built(url: str) -> AsyncIterator[tuple[AsyncEngine, Any]]:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(MixBase.metadata.create_all)
        executor = TransactionExecutor(engine, REGISTRY, site="mix")
        await executor.create_ledger()
        yield engine, executor
    finally:
        await engine.dispose()


def _create(name: str) -> tuple[Transaction, str]:
    tx = TransactionBuilder("add_item", registry=REGISTRY)
    handle = tx.create(Item, {"name": name})
    return tx.build(), handle.step_id


def _update(key: int, changes: dict[str, Any], expected: dict[str, Any]) -> Transaction:
    tx = TransactionBuilder("change_item", registry=REGISTRY)
    tx.update(Item, {"id": key}, changes, expected=expected)
    return tx.build()


def _pipelined_calls(executor: Any) -> list[int]:
    """Calls of the executor's pipelined path from now on (white box: which path ran)."""
    calls: list[int] = []
    path = executor._pipelined
    original = path.run

    async def counted(*args: Any) -> Any:
        calls.append(1)
        return await original(*args)

    path.run = counted
    return calls


async def _seed(executor: Any, names: list[str]) -> list[int]:
    made = [_create(name) for name in names]
    result = await executor.execute_batch([tx for tx, _ in made])
    assert all(o.applied for o in result.outcomes)
    return [o.generated[step]["id"] for o, (_, step) in zip(result.outcomes, made, strict=True)]


async def _rows(engine: AsyncEngine) -> dict[int, tuple[str, int]]:
    async with engine.connect() as conn:
        found = (await conn.execute(select(Item.id, Item.name, Item.qty))).all()
    return {key: (name, qty) for key, name, qty in found}


async def _theirs(engine: AsyncEngine, key: int, name: str) -> None:
    """Another party's write, straight to the main database."""
    async with engine.begin() as conn:
        await conn.execute(update(Item).where(Item.id == key).values(name=name))


@pytest.mark.parametrize("database", DATABASES)
async def test_creates_with_returning_and_compare_and_set_updates_go_on_past_a_conflict(
    database: str, tmp_path: Path
) -> None:
    async with _executor(database, tmp_path) as (engine, executor):
        a, b = await _seed(executor, ["a", "b"])
        await _theirs(engine, b, "b-theirs")
        c, c_step = _create("c")
        d, d_step = _create("d")
        stale = _update(b, {"name": "b-mine"}, expected={"name": "b"})
        batch = [
            c,
            _update(a, {"name": "a2"}, expected={"name": "a"}),
            stale,
            d,
            _update(a, {"qty": 5}, expected={"qty": 0}),
        ]
        pipelined = _pipelined_calls(executor)
        result = await executor.execute_batch(batch)
        assert bool(pipelined) is (database == "psycopg")

        outcomes = result.outcomes
        assert [o.applied for o in outcomes] == [True, True, False, True, True]
        assert outcomes[2].conflicted and not outcomes[2].holds and not outcomes[2].waiting
        assert outcomes[2].conflicts[0].kind == "update_origin_differs"
        # the database's values came back for both creates, in buffer order
        made_c, made_d = outcomes[0].generated[c_step], outcomes[3].generated[d_step]
        assert made_c["qty"] == 0 and made_d["qty"] == 0
        assert b < made_c["id"] < made_d["id"]
        assert await _rows(engine) == {
            a: ("a2", 5),
            b: ("b-theirs", 0),
            made_c["id"]: ("c", 0),
            made_d["id"]: ("d", 0),
        }
        async with engine.connect() as conn:
            logged = await unresolved_of(conn, stale.transaction_id)
        assert [r.conflict.kind for r in logged] == ["update_origin_differs"]
        assert logged[0].conflict.theirs["name"] == "b-theirs"


@pytest.mark.parametrize("database", DATABASES)
async def test_a_conflict_holds_nothing_but_a_retried_failure_holds_what_follows(
    database: str, tmp_path: Path
) -> None:
    async with _executor(database, tmp_path) as (engine, executor):
        a, b = await _seed(executor, ["a", "b"])
        await _theirs(engine, b, "b-theirs")
        stale = _update(b, {"name": "b-mine"}, expected={"name": "b"})
        broken = _update(a, {"qty": -1}, expected={"qty": 0})  # the CHECK refuses it
        after, _ = _create("after")
        result = await executor.execute_batch([stale, broken, after])
        first, failed, behind = result.outcomes
        assert first.conflicted
        assert failed.error is not None and failed.kind is FailureKind.DATA and failed.holds
        assert behind.waiting  # not applied before the failed one is retried
        assert await _rows(engine) == {a: ("a", 0), b: ("b-theirs", 0)}


@pytest.mark.parametrize("database", DATABASES)
async def test_a_dependent_waits_with_its_conflict_and_the_rest_applies_with_its_values(
    database: str, tmp_path: Path
) -> None:
    async with _executor(database, tmp_path) as (engine, executor):
        a, b = await _seed(executor, ["a", "b"])
        await _theirs(engine, b, "b-theirs")
        stale = _update(b, {"name": "b-mine"}, expected={"name": "b"})
        dependent = _update(b, {"qty": 3}, expected={"qty": 0})  # builds on the rejected one
        later, later_step = _create("later")
        batch = [stale, dependent, later, _update(a, {"qty": 2}, expected={"qty": 0})]
        outcomes = (await executor.execute_batch(batch)).outcomes
        assert outcomes[0].conflicted and outcomes[1].conflicted
        assert str(outcomes[1].conflicts[0].outcome) == "waiting"
        assert outcomes[2].applied and outcomes[3].applied
        made = outcomes[2].generated[later_step]["id"]
        assert await _rows(engine) == {a: ("a", 2), b: ("b-theirs", 0), made: ("later", 0)}
