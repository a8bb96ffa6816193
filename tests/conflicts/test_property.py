"""A property of several writers: no write is lost without a record, none overwrites silently.

Random interleavings of creates, updates and deletes of a few rows by three
parties (the main site applying directly, two sites buffering), with random
drains in between and at the end, in batches of 1, 7 and 100. Every update
sets a value no other write sets, so the writes that were applied to a row
can be put in a chain: each one's base must be the value the one before it
left. Two applied writes on the same base would be a silent overwrite.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg import fresh_database
from sqlalchemy import select
from writers import Note, Parties, parties

from ccat_buffering.builder import TransactionBuilder
from ccat_buffering.conflicts.log import list_conflicts
from ccat_buffering.database import ledger_table
from ccat_buffering.errors import ConflictError

from support import sqlite_url

ROWS = 3
PARTIES = ("main", "a", "b")

event = st.one_of(
    st.tuples(st.just("update"), st.sampled_from(PARTIES), st.integers(0, ROWS - 1)),
    st.tuples(st.just("delete"), st.sampled_from(PARTIES), st.integers(0, ROWS - 1)),
    st.tuples(st.just("create"), st.sampled_from(PARTIES), st.integers(0, ROWS - 1)),
    st.tuples(st.just("drain"), st.sampled_from(("a", "b")), st.just(0)),
)
scenario = st.tuples(
    st.lists(event, min_size=1, max_size=14),
    st.sampled_from((("a", "b"), ("b", "a"))),
)


ABSENT = "<absent>"


@dataclass(frozen=True)
class Write:
    """One submitted write: on which row, from what the writer saw, to what."""

    op: str
    key: uuid.UUID
    base: str
    value: str


@dataclass
class Written:
    """What one scenario submitted."""

    writes: dict[str, Write] = field(default_factory=dict)
    refused_at_main: set[str] = field(default_factory=set)


async def _play(p: Parties, events: list[tuple[str, str, int]], last: tuple[str, str]) -> Written:
    keys = [uuid.uuid4() for _ in range(ROWS)]
    written = Written()
    party = {"main": p.main, "a": p.a, "b": p.b}
    for n, (op, who, row) in enumerate(events):
        site = party[who]
        if op == "drain":
            await p.drain(site)
            continue
        key = keys[row]
        seen = await site.reads.get(Note, key)
        value = f"{who}{n}"
        if (op == "create") != (seen is None):
            continue  # a service creates what it does not see, changes what it sees
        tx = TransactionBuilder("edit", registry=site.registry)
        if op == "create":
            tx.create(Note, {"id": key, "title": value, "status": value})
        elif op == "update":
            tx.update(Note, key, {"status": value})
        else:
            tx.delete(Note, key)
        built = tx.build()
        base = ABSENT if seen is None else seen["status"]
        written.writes[built.transaction_id] = Write(
            op, key, base, ABSENT if op == "delete" else value
        )
        try:
            await site.submit(built)
        except ConflictError:
            written.refused_at_main.add(built.transaction_id)
    for who in last:
        await p.drain(party[who])
    return written


async def _check(p: Parties, written: Written) -> None:
    ids = list(written.writes)
    async with p.main.engine.connect() as conn:
        column = ledger_table.c.transaction_id
        applied = {r[0] for r in await conn.execute(select(column).where(column.in_(ids)))}
        records = [r for r in await list_conflicts(conn, limit=10_000) if r.transaction_id in ids]
        rows = {r.id: r for r in (await conn.execute(select(Note.id, Note.status))).all()}
    held: dict[str, Any] = {}
    for record in records:
        if record.unresolved:
            assert record.transaction_id not in held, "one record per transaction not applied"
            held[record.transaction_id] = record
    for tx_id in ids:
        # Applied, or held with exactly one record: never lost without a trace.
        assert (tx_id in applied) != (tx_id in held), (written.writes[tx_id], held.get(tx_id))
    assert written.refused_at_main <= set(held)
    by_row: dict[uuid.UUID, list[Write]] = {}
    for tx_id in applied:
        by_row.setdefault(written.writes[tx_id].key, []).append(written.writes[tx_id])
    for key, writes in by_row.items():
        _one_chain(writes, None if key not in rows else rows[key].status)


def _one_chain(writes: list[Write], final: str | None) -> None:
    """The applied writes of a row, chained base to value: no fork, ending in the row."""
    out: dict[str, list[Write]] = {}
    for w in writes:
        out.setdefault(w.base, []).append(w)
    for state, following in out.items():
        # Two applied writes made against the same value: one overwrote the other.
        assert state == ABSENT or len(following) == 1, f"silent overwrite of {state}: {following}"
    creates = out.get(ABSENT, [])
    deletes = [w for w in writes if w.op == "delete"]
    assert len(creates) == len(deletes) + (final is not None), writes
    used, ends = 0, []
    for create in creates:
        used += 1
        state = create.value
        while state in out:
            step = out[state][0]
            used += 1
            state = step.value
            if step.op == "delete":
                break
        else:
            ends.append(state)
    assert used == len(writes), f"writes off every chain: {writes}"
    assert ends == ([] if final is None else [final]), (ends, final, writes)


async def _scenario(url: str, batch_size: int, events: Any, last: Any) -> None:
    async with parties(url, batch_size=batch_size) as p:
        written = await _play(p, events, last)
        await _check(p, written)


@pytest.mark.parametrize("batch_size", [1, 7, 100])
def test_sqlite_random_interleavings(tmp_path: Path, batch_size: int) -> None:
    counter = iter(range(10_000))

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenario)
    def run(drawn: Any) -> None:
        events, last = drawn
        folder = tmp_path / f"x{next(counter)}"
        folder.mkdir()
        asyncio.run(_scenario(sqlite_url(folder), batch_size, events, last))

    run()


@pytest.mark.parametrize("batch_size", [1, 7, 100])
def test_postgres_pipelined_random_interleavings(batch_size: int) -> None:
    @settings(
        max_examples=6,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenario)
    def run(drawn: Any) -> None:
        events, last = drawn

        async def go() -> None:
            async with fresh_database() as url:
                psycopg = "postgresql+psycopg" + url[url.index("://") :]
                await _scenario(psycopg, batch_size, events, last)

        asyncio.run(go())

    run()
