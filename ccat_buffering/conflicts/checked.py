"""Checked writes on the session path: compare-and-set, then find and decide a conflict.

The common case costs what an unchecked write costs: one statement whose
WHERE holds the base. Only when it matches no row is the row read (locked,
``FOR UPDATE``) to tell which conflict it is and what the other party wrote,
and the policy decides what is still written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy import update as sa_update
from sqlalchemy.ext.asyncio import AsyncSession

from ccat_buffering.columns import columns_of
from ccat_buffering.conflicts.decide import decide_row, newer
from ccat_buffering.conflicts.kinds import (
    Conflict,
    ConflictKind,
    ConflictOutcome,
    ConflictPolicies,
    ConflictPolicy,
)
from ccat_buffering.conflicts.statements import base_clauses
from ccat_buffering.models import Step

__all__ = [
    "Checks",
    "ConflictRejected",
    "ConflictSuspected",
    "checked_delete",
    "checked_update",
    "current",
    "met",
    "same",
    "settle",
]


class ConflictRejected(Exception):
    """A step's conflict was rejected: its transaction rolls back to its savepoint."""

    def __init__(self, conflict: Conflict) -> None:
        super().__init__(conflict.describe())
        self.conflict = conflict


class ConflictSuspected(Exception):
    """A checked write matched no row where conflicts are not decided (a grouped batch)."""


@dataclass
class Checks:
    """How one transaction's writes are checked, and the conflicts they met.

    Attributes:
        policies: The policies.
        written_at: When the transaction was made (a delete's write time).
        strict: Raise :class:`ConflictSuspected` at the first mismatch (a
            grouped batch falls back to one by one, where conflicts are decided).
        force: Write without the base check (an operator's ``--keep mine``).
        conflicts: What the transaction met, in step order.
    """

    policies: ConflictPolicies
    written_at: dt.datetime | None = None
    strict: bool = False
    force: bool = False
    conflicts: list[Conflict] = field(default_factory=list)


def _where(model: type[Any], key: Mapping[str, Any]) -> list[Any]:
    return [getattr(model, name) == value for name, value in key.items()]


async def current(
    session: AsyncSession, model: type[Any], where: Sequence[Any]
) -> dict[str, Any] | None:
    """The row ``where`` picks, locked on PostgreSQL (``FOR UPDATE``), or ``None``."""
    columns = columns_of(model)
    names = list(columns.rules)
    query = select(*(getattr(model, n) for n in names)).where(*where)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    rows = (await session.execute(query)).all()
    return dict(zip(names, rows[0], strict=True)) if rows else None


def same(a: Any, b: Any) -> bool:
    """Whether two values are equal (values that cannot be compared are not)."""
    try:
        return bool(a == b)
    except TypeError:
        return False


def settle(checks: Checks, conflict: Conflict) -> None:
    """Record ``conflict``; raise :class:`ConflictRejected` when its policy rejected it."""
    checks.conflicts.append(conflict)
    if conflict.outcome is ConflictOutcome.REJECTED:
        raise ConflictRejected(conflict)


def met(
    checks: Checks,
    step: Step,
    key: Mapping[str, Any],
    kind: ConflictKind,
    sides: tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]],
    policy: ConflictPolicy,
    outcome: ConflictOutcome,
) -> None:
    """:func:`settle` the conflict ``step`` met at ``key``; ``sides``: base, mine, theirs."""
    base, mine, theirs = sides
    settle(
        checks,
        Conflict(
            step.step_id,
            step.model,
            dict(key),
            kind,
            dict(base),
            dict(mine),
            dict(theirs),
            policy,
            outcome,
        ),
    )


def _missing(
    checks: Checks,
    step: Step,
    key: Mapping[str, Any],
    kind: ConflictKind,
    sides: tuple[Mapping[str, Any], Mapping[str, Any]],
) -> None:
    """A row to update or delete is gone: ``reject`` rejects, any other policy skips the step."""
    policy = checks.policies.of_model(step.model)
    rejects = policy is ConflictPolicy.REJECT
    outcome = ConflictOutcome.REJECTED if rejects else ConflictOutcome.KEPT_THEIRS
    met(checks, step, key, kind, (*sides, {}), policy, outcome)


def _base_of(step: Step, version: str | None) -> dict[str, Any]:
    """What ``step`` was made against: its expected values, and its version."""
    base = dict(step.expected or {})
    if version is not None and step.expected_version is not None:
        base[version] = step.expected_version
    return base


async def checked_update(
    session: AsyncSession,
    model: type[Any],
    step: Step,
    key: Mapping[str, Any],
    data: Mapping[str, Any],
    returning: Sequence[Any],
    checks: Checks,
) -> Sequence[Any] | None:
    """Update one row where it still holds the step's base; decide a conflict if not.

    Returns:
        The written row's ``returning`` values, or ``None`` when nothing was written.

    Raises:
        ConflictRejected: The policy rejected the conflict.
        ConflictSuspected: ``checks.strict`` and the row did not match.
    """
    dialect = session.get_bind().dialect.name
    name = step.model
    columns = columns_of(model)
    version = columns.version
    values = dict(data)
    clauses = [] if checks.force else base_clauses(model, step, dialect)
    if checks.force and version is not None:
        values[version] = getattr(model, version) + 1
    statement = (
        sa_update(model)
        .where(*_where(model, key), *clauses)
        .values(**values)
        .returning(*returning)
        .execution_options(synchronize_session=False)
    )
    rows = (await session.execute(statement)).all()
    if rows:
        return rows[0]
    if checks.strict:
        raise ConflictSuspected(step.step_id)
    theirs = await current(session, model, _where(model, key))
    base = _base_of(step, version)
    if theirs is None:
        _missing(checks, step, key, ConflictKind.UPDATE_MISSING, (base, data))
        return None
    changed = [f for f in data if f != version]
    moved_version = (
        version is not None
        and step.expected_version is not None
        and theirs[version] != step.expected_version
    )
    if moved_version:
        conflicting = [f for f in changed if f != checks.policies.write_time_of(name)]
    else:
        conflicting = [f for f in changed if f in base and not same(theirs.get(f), base[f])]
    shown = {f: theirs.get(f) for f in [*changed, *([version] if version else [])]}
    mine = dict(data)
    decision = decide_row(
        model, name, checks.policies, conflicting, base, {f: data[f] for f in changed}, theirs
    )
    if version is not None:
        mine_version = data.get(version)
        if decision.write:
            decision.write[version] = columns.next_version(theirs[version])
        mine = {**mine, version: mine_version}
    kind = ConflictKind.UPDATE_ORIGIN_DIFFERS
    met(checks, step, key, kind, (base, mine, shown), decision.policy, decision.outcome)
    if not decision.write:
        return None
    # The row is locked (FOR UPDATE) or the database has one writer (SQLite): it
    # still holds what was read.
    statement = (
        sa_update(model)
        .where(*_where(model, key))
        .values(**decision.write)
        .returning(*returning)
        .execution_options(synchronize_session=False)
    )
    rows = (await session.execute(statement)).all()
    return rows[0] if rows else None


async def checked_delete(
    session: AsyncSession,
    model: type[Any],
    step: Step,
    key: Mapping[str, Any],
    checks: Checks,
) -> None:
    """Delete one row where it still holds the step's base; decide a conflict if not.

    Raises:
        ConflictRejected: The policy rejected the conflict.
        ConflictSuspected: ``checks.strict`` and the row did not match.
    """
    dialect = session.get_bind().dialect.name
    name = step.model
    clauses = [] if checks.force else base_clauses(model, step, dialect)
    first = getattr(model, next(iter(key)))
    statement = (
        delete(model).where(*_where(model, key), *clauses).returning(first)
    ).execution_options(synchronize_session=False)
    if (await session.execute(statement)).all():
        return
    if checks.strict:
        raise ConflictSuspected(step.step_id)
    theirs = await current(session, model, _where(model, key))
    base = _base_of(step, columns_of(model).version)
    policy = checks.policies.of_model(name)
    if theirs is None:
        _missing(checks, step, key, ConflictKind.DELETE_MISSING, (base, {}))
        return
    clock = checks.policies.write_time_of(name)
    wins = policy is ConflictPolicy.OVERWRITE or (
        policy is ConflictPolicy.NEWER_WINS
        and clock is not None
        and newer(checks.written_at, theirs.get(clock))
    )
    if policy is ConflictPolicy.NEWER_WINS and clock is not None and not wins:
        outcome = ConflictOutcome.KEPT_THEIRS
    elif wins:
        outcome = ConflictOutcome.APPLIED
    else:
        outcome = ConflictOutcome.REJECTED
    shown = {f: theirs.get(f) for f in (base or theirs)}
    met(checks, step, key, ConflictKind.DELETE_ORIGIN_DIFFERS, (base, {}, shown), policy, outcome)
    if wins:
        await session.execute(
            delete(model).where(*_where(model, key)).execution_options(synchronize_session=False)
        )
