"""A property of several writers: no write is lost without a record, none overwrites silently.

Random interleavings of creates, updates and deletes of a few rows by three
parties (the main site applying directly, two sites buffering), with random
drains in between and at the end, in batches of 1, 7 and 100, under each
policy (reject, overwrite, newer_wins, merge), on SQLite and on PostgreSQL
through asyncpg and psycopg (pipelined). A small model of the main database
(:class:`Model`) applies the same writes in the order they commit, deciding
each conflict as the policy says: every transaction's fate (applied cleanly,
applied with its conflict decided, or held with exactly one record) and
every row must be the model's.

Under ``reject``, the property is also checked as chains: every update sets a
value no other write sets, so the writes applied to a row can be put in a
chain, each one's base the value the one before it left. Two applied writes
on the same base would be a silent overwrite.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from writers import Note, Parties, parties

from ccat_buffering.builder import TransactionBuilder
from ccat_buffering.conflicts.log import list_conflicts
from ccat_buffering.database import ledger_table
from ccat_buffering.errors import ConflictError

ROWS = 2
PARTIES = ("main", "a", "b")

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


class Model:
    """What the main database holds after each write, as the policy defines it.

    Writes apply in the order the scenario commits them: the main site's at
    once, a site's in buffer order at its next drain. Each decides as
    docs/several-writers.rst says; a site's write to a row one of its
    conflicted writes holds waits with it.
    """

    def __init__(self, policy: str, held_sites: tuple[str, ...] = ("a", "b")) -> None:
        self.policy = policy
        self.rows: dict[uuid.UUID, dict[str, Any]] = {}
        self.held: dict[str, set[uuid.UUID]] = {site: set() for site in held_sites}
        self.fates: dict[str, str] = {}
        """By transaction: ``clean``, or the outcome of its conflict."""

    def apply(self, tx_id: str, who: str, w: Write, seen: dict[str, Any] | None, n: int) -> None:
        if w.key in self.held.get(who, ()):
            self.fates[tx_id] = "waiting"
            return
        row = self.rows.get(w.key)
        fate = "clean"
        mine = {"title": w.value, "status": w.value, "meta": None, "at": n}
        if w.op == "create" and row is not None:
            fate = self._decide(row, n, whole=True)
            if fate == "applied":
                self.rows[w.key] = mine
        elif w.op == "create":
            self.rows[w.key] = mine
        elif row is None:  # update_missing, delete_missing
            fate = "rejected" if self._model_policy() == "reject" else "kept_theirs"
        elif w.op == "delete":
            assert seen is not None
            if any(row[f] != seen[f] for f in ("title", "status", "meta")):
                fate = self._decide(row, n, whole=True)
            if fate in ("clean", "applied"):
                del self.rows[w.key]
        else:
            field_name = "meta" if self.policy == "merge" else "status"
            assert seen is not None
            if row[field_name] == seen[field_name]:
                row[field_name] = self._update_value(seen, w.value)
                row["at"] = n
            elif self.policy == "merge":
                fate = "merged"
                row["meta"] = {**(row["meta"] or {}), w.value: 1}
            else:
                fate = self._decide(row, n, whole=False)
                if fate == "applied":
                    row["status"], row["at"] = w.value, n
        self.fates[tx_id] = fate
        if fate == "rejected" and who in self.held:
            self.held[who].add(w.key)

    def _update_value(self, seen: dict[str, Any], value: str) -> Any:
        return {**(seen["meta"] or {}), value: 1} if self.policy == "merge" else value

    def _model_policy(self) -> str:
        return "reject" if self.policy == "merge" else self.policy  # merge covers meta only

    def _decide(self, row: dict[str, Any], n: int, *, whole: bool) -> str:
        policy = self._model_policy()
        if policy == "overwrite":
            return "applied"
        if policy == "newer_wins":
            return "applied" if n > row["at"] else "kept_theirs"
        return "rejected"


async def _scenario(
    url: str, policy: str, batch_size: int, events: Any, last: tuple[str, str]
) -> None:
    """Play ``events`` under ``policy`` and compare every fate and row with :class:`Model`."""
    extra: dict[str, Any] = {}
    if policy == "merge":
        extra["conflict_policies"] = {"Note.meta": "merge"}
    elif policy != "reject":
        extra["conflict_policies"] = {"Note": policy}
        extra["conflict_write_time"] = {"Note": "written_at"}
    model = Model(policy)
    async with parties(url, batch_size=batch_size, **extra) as p:
        keys = [uuid.uuid4() for _ in range(ROWS)]
        party = {"main": p.main, "a": p.a, "b": p.b}
        queued: dict[str, list[Any]] = {"a": [], "b": []}
        ids: list[str] = []
        written = Written()
        # Every row exists at first, so that most writes meet one another.
        for k in keys:
            seed = TransactionBuilder("seed", registry=p.main.registry)
            seed.create(Note, {"id": k, "title": "s", "status": "s"})
            await p.main.submit(seed.build())
            written.writes[seed.transaction_id] = Write("create", k, ABSENT, "s")
            model.rows[k] = {"title": "s", "status": "s", "meta": None, "at": -1}

        async def drain(who: str) -> None:
            await p.drain(party[who])
            for args in queued[who]:
                model.apply(*args)
            queued[who].clear()

        for n, (op, who, row) in enumerate(events):
            if op == "drain":
                await drain(who)
                continue
            site, key = party[who], keys[row]
            seen = await site.reads.get(Note, key)
            value = f"{who}{n}"
            if (op == "create") != (seen is None):
                continue
            tx = TransactionBuilder("edit", registry=site.registry)
            # Every other write as a bulk step: its rows are checked as single ones.
            bulk = n % 2 == 1
            if op == "create":
                values = {"id": key, "title": value, "status": value}
                if bulk:
                    tx.bulk_create(Note, [values])
                else:
                    tx.create(Note, values)
            elif op == "update":
                meta = {**((seen or {}).get("meta") or {}), value: 1}
                change = {"meta": meta} if policy == "merge" else {"status": value}
                if bulk:
                    tx.bulk_update(Note, [{"id": key, **change}])
                else:
                    tx.update(Note, key, change)
            else:
                tx.delete(Note, key)
            built = tx.build()
            ids.append(built.transaction_id)
            write = Write(
                op,
                key,
                ABSENT if seen is None else seen["status"],
                ABSENT if op == "delete" else value,
            )
            written.writes[built.transaction_id] = write
            args = (built.transaction_id, who, write, seen and dict(seen), n)
            if who == "main":
                try:
                    await site.submit(built)
                except ConflictError:
                    written.refused_at_main.add(built.transaction_id)
                model.apply(*args)
            else:
                await site.submit(built)
                queued[who].append(args)
        for who in last:
            await drain(who)
        if policy == "reject":
            await _check(p, written)  # the same property, told as chains of writes
        async with p.main.engine.connect() as conn:
            column = ledger_table.c.transaction_id
            applied = {r[0] for r in await conn.execute(select(column).where(column.in_(ids)))}
            records = await list_conflicts(conn, limit=10_000)
            found = (
                await conn.execute(
                    select(Note.id, Note.title, Note.status, Note.meta).where(Note.id.in_(keys))
                )
            ).all()
    fates: dict[str, list[str]] = {}
    for record in records:
        if record.transaction_id in ids:
            fates.setdefault(record.transaction_id, []).append(str(record.conflict.outcome))
    for tx_id in ids:
        wanted = model.fates[tx_id]
        got = fates.get(tx_id, ["clean"])
        assert got == [wanted], (tx_id, wanted, got, events)
        # Applied (its conflicts decided) or held: never lost without a record.
        assert (tx_id in applied) == (wanted not in ("rejected", "waiting")), (tx_id, wanted)
    rows = {r.id: {"title": r.title, "status": r.status, "meta": r.meta} for r in found}
    want = {k: {f: v[f] for f in ("title", "status", "meta")} for k, v in model.rows.items()}
    assert rows == want, events


# Mostly updates of two rows that exist, so that most writes meet another.
_update = st.tuples(st.just("update"), st.sampled_from(PARTIES), st.integers(0, ROWS - 1))
scenario = st.tuples(
    st.lists(
        st.one_of(
            _update,
            _update,
            _update,
            st.tuples(st.just("delete"), st.sampled_from(PARTIES), st.integers(0, ROWS - 1)),
            st.tuples(st.just("create"), st.sampled_from(PARTIES), st.integers(0, ROWS - 1)),
            st.tuples(st.just("drain"), st.sampled_from(("a", "b")), st.just(0)),
        ),
        min_size=6,
        max_size=12,
    ),
    st.sampled_from((("a", "b"), ("b", "a"))),
)

POLICIES = ("reject", "overwrite", "newer_wins", "merge")
EXAMPLES = {"sqlite": 10, "asyncpg": 8, "psycopg": 8}


def test_every_policy_gives_the_state_it_defines(main_url: str) -> None:
    """Each policy, batch size and drain order: every fate and final row as the model says.

    One database per driver (the scenarios' keys and transactions are their
    own), so that an example costs its writes, not a database.
    """
    driver = main_url.split(":", 1)[0].split("+")[-1]
    driver = "sqlite" if driver == "aiosqlite" else driver

    @settings(
        max_examples=EXAMPLES[driver],
        deadline=None,
        # No shrinking: an example costs a third of a second, a shrink minutes;
        # the failure names its events and the transaction that went astray.
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenario, st.sampled_from(POLICIES), st.sampled_from((1, 7, 100)))
    def run(drawn: Any, policy: str, batch_size: int) -> None:
        events, last = drawn
        asyncio.run(_scenario(main_url, policy, batch_size, events, last))

    run()
