"""The conflict log: one row per conflict, in the main database.

Written in the same database transaction as the write it decides (or, for a
rejected transaction, as the rest of its batch), so that the log and the data
never disagree. A rejected conflict keeps the transaction it belongs to
(``payload``), so that ``ccat-buffering conflicts resolve`` can apply it
from anywhere that reaches the main database.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ccat_buffering._codec import decode_value, encode_value
from ccat_buffering.conflicts.kinds import Conflict, ConflictOutcome
from ccat_buffering.models import Transaction, utc_now

__all__ = [
    "CONFLICT_TABLE_NAME",
    "ConflictRecord",
    "conflict_metadata",
    "conflict_rows",
    "conflict_table",
    "count_unresolved",
    "create_conflict_log",
    "get_conflict",
    "list_conflicts",
    "mark_resolved",
    "unresolved_of",
    "unresolved_payloads",
]

CONFLICT_TABLE_NAME = "ccat_buffering_conflicts"

conflict_metadata = MetaData()
"""Metadata holding only the conflict log; include it in Alembic's ``target_metadata``."""

conflict_table = Table(
    CONFLICT_TABLE_NAME,
    conflict_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("site", String(200), nullable=False),
    Column("transaction_id", String(36), nullable=False, index=True),
    Column("endpoint", String(128), nullable=False),
    Column("step_id", String(128), nullable=False),
    Column("model", String(200), nullable=False),
    Column("key", Text, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("base", Text, nullable=False),
    Column("mine", Text, nullable=False),
    Column("theirs", Text, nullable=False),
    Column("policy", String(16), nullable=False),
    Column("outcome", String(16), nullable=False, index=True),
    Column("payload", Text, nullable=True),
    Column("detected_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("transaction_id", "step_id", "detected_at"),
)
"""The conflict log (``outcome = 'rejected'`` and no ``resolved_at``: unresolved)."""


def _dump(value: Any) -> str:
    return json.dumps(encode_value(dict(value), "conflict"), sort_keys=True)


def _load(text: str) -> dict[str, Any]:
    loaded = decode_value(json.loads(text))
    return dict(loaded) if isinstance(loaded, dict) else {}


@dataclass(frozen=True)
class ConflictRecord:
    """One row of the conflict log, decoded.

    Attributes:
        id: The log's id (what ``conflicts resolve`` takes).
        site: The site that wrote the transaction.
        transaction_id: The transaction.
        endpoint: Its endpoint.
        conflict: What was found and decided.
        payload: The transaction, for a rejected one.
        detected_at: When it was found.
        resolved_at: When an operator resolved it.
    """

    id: int
    site: str
    transaction_id: str
    endpoint: str
    conflict: Conflict
    payload: str | None
    detected_at: dt.datetime
    resolved_at: dt.datetime | None

    @property
    def unresolved(self) -> bool:
        """Whether it waits for an operator."""
        return (
            self.conflict.outcome in (ConflictOutcome.REJECTED, ConflictOutcome.WAITING)
            and self.resolved_at is None
        )

    def as_json(self) -> dict[str, Any]:
        """The record as plain JSON data (values in the lossless codec)."""
        c = self.conflict
        return {
            "id": self.id,
            "site": self.site,
            "transaction_id": self.transaction_id,
            "endpoint": self.endpoint,
            "step_id": c.step_id,
            "model": c.model,
            "key": encode_value(dict(c.key)),
            "kind": str(c.kind),
            "base": encode_value(dict(c.base)),
            "mine": encode_value(dict(c.mine)),
            "theirs": encode_value(dict(c.theirs)),
            "policy": str(c.policy),
            "outcome": str(c.outcome),
            "unresolved": self.unresolved,
            "detected_at": self.detected_at.isoformat(),
            "resolved_at": None if self.resolved_at is None else self.resolved_at.isoformat(),
        }


def conflict_rows(
    site: str, transaction: Transaction, conflicts: Sequence[Conflict]
) -> list[dict[str, Any]]:
    """The log rows of ``conflicts`` met by ``transaction``."""
    now = utc_now()
    held = (ConflictOutcome.REJECTED, ConflictOutcome.WAITING)
    payload = transaction.to_json(None) if any(c.outcome in held for c in conflicts) else None
    return [
        {
            "site": site,
            "transaction_id": transaction.transaction_id,
            "endpoint": transaction.endpoint,
            "step_id": c.step_id,
            "model": c.model,
            "key": _dump(c.key),
            "kind": str(c.kind),
            "base": _dump(c.base),
            "mine": _dump(c.mine),
            "theirs": _dump(c.theirs),
            "policy": str(c.policy),
            "outcome": str(c.outcome),
            "payload": payload if c.outcome in held else None,
            "detected_at": now,
            "resolved_at": None,
        }
        for c in conflicts
    ]


async def create_conflict_log(engine: AsyncEngine) -> None:
    """Create the conflict log table if it does not exist."""
    async with engine.begin() as conn:
        await conn.run_sync(conflict_metadata.create_all)


def _record(row: Any) -> ConflictRecord:
    from ccat_buffering.conflicts.kinds import ConflictKind, ConflictPolicy

    m = row._mapping
    detected = m["detected_at"]
    resolved = m["resolved_at"]
    return ConflictRecord(
        id=m["id"],
        site=m["site"],
        transaction_id=m["transaction_id"],
        endpoint=m["endpoint"],
        conflict=Conflict(
            step_id=m["step_id"],
            model=m["model"],
            key=_load(m["key"]),
            kind=ConflictKind(m["kind"]),
            base=_load(m["base"]),
            mine=_load(m["mine"]),
            theirs=_load(m["theirs"]),
            policy=ConflictPolicy(m["policy"]),
            outcome=ConflictOutcome(m["outcome"]),
        ),
        payload=m["payload"],
        detected_at=_aware(detected),
        resolved_at=None if resolved is None else _aware(resolved),
    )


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite gives naive datetimes back: they were stored in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


_UNRESOLVED = conflict_table.c.outcome.in_(
    [str(ConflictOutcome.REJECTED), str(ConflictOutcome.WAITING)]
) & (conflict_table.c.resolved_at.is_(None))


def _matching(
    site: str | None, model: str | None, kind: str | None, unresolved_only: bool
) -> list[Any]:
    c = conflict_table.c
    found: list[Any] = [_UNRESOLVED] if unresolved_only else []
    found += [
        column == value
        for column, value in ((c.site, site), (c.model, model), (c.kind, kind))
        if value is not None
    ]
    return found


async def list_conflicts(
    conn: AsyncConnection,
    *,
    site: str | None = None,
    unresolved_only: bool = False,
    limit: int = 100,
    model: str | None = None,
    kind: str | None = None,
    before: int | None = None,
) -> list[ConflictRecord]:
    """Conflicts, newest first, filtered in the query.

    Args:
        conn: The main database.
        site: Only this site's.
        unresolved_only: Only those that wait for an operator.
        limit: At most this many.
        model: Only those on this model (as the log names it).
        kind: Only those of this kind.
        before: Only those with a smaller id: the page after a page whose last
            (oldest) row had this id. A page reads its rows, not those of the
            pages before it.
    """
    query = select(conflict_table).where(*_matching(site, model, kind, unresolved_only))
    if before is not None:
        query = query.where(conflict_table.c.id < before)
    query = query.order_by(conflict_table.c.id.desc()).limit(limit)
    return [_record(row) for row in await conn.execute(query)]


async def get_conflict(conn: AsyncConnection, conflict_id: int) -> ConflictRecord | None:
    """One conflict by its id, or ``None``."""
    rows = (
        await conn.execute(select(conflict_table).where(conflict_table.c.id == conflict_id))
    ).all()
    return _record(rows[0]) if rows else None


async def unresolved_of(conn: AsyncConnection, transaction_id: str) -> list[ConflictRecord]:
    """The unresolved conflicts of one transaction (a redelivery finds them)."""
    query = select(conflict_table).where(
        (conflict_table.c.transaction_id == transaction_id) & _UNRESOLVED
    )
    return [_record(row) for row in await conn.execute(query)]


async def count_unresolved(
    conn: AsyncConnection,
    site: str | None = None,
    *,
    model: str | None = None,
    kind: str | None = None,
) -> int:
    """How many conflicts wait for an operator (of ``site``, or every site; of a model, a kind)."""
    query = select(func.count()).select_from(conflict_table)
    return int((await conn.execute(query.where(*_matching(site, model, kind, True)))).scalar() or 0)


async def unresolved_payloads(conn: AsyncConnection, site: str) -> list[ConflictRecord]:
    """The unresolved conflicts of one site, in the order they were found."""
    query = (
        select(conflict_table)
        .where((conflict_table.c.site == site) & _UNRESOLVED)
        .order_by(conflict_table.c.id)
    )
    return [_record(row) for row in await conn.execute(query)]


async def mark_resolved(conn: Any, transaction_id: str, outcome: ConflictOutcome) -> None:
    """Mark every unresolved conflict of a transaction resolved, with how."""
    await conn.execute(
        update(conflict_table)
        .where((conflict_table.c.transaction_id == transaction_id) & _UNRESOLVED)
        .values(outcome=str(outcome), resolved_at=utc_now())
    )


async def insert_rows(conn: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Write log rows on a connection or session (inside the caller's transaction)."""
    if rows:
        await conn.execute(insert(conflict_table), list(rows))
