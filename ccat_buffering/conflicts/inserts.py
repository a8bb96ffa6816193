"""Checked creates: ``INSERT ... ON CONFLICT DO NOTHING``, then find and decide the row met.

A create whose key or unique columns exist already (the same natural key
created at two sites) is the ``insert_exists`` conflict, found at the first
attempt and decided by the policy, never a data error that is retried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy import update as sa_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ccat_buffering.columns import columns_of
from ccat_buffering.conflicts.checked import Checks, ConflictSuspected, current, met, same
from ccat_buffering.conflicts.decide import decide_row
from ccat_buffering.conflicts.kinds import ConflictKind, ConflictOutcome, ConflictPolicy
from ccat_buffering.conflicts.statements import equals
from ccat_buffering.models import Step

__all__ = ["checked_bulk_create", "checked_create"]


def _candidate_keys(model: type[Any], data: Mapping[str, Any]) -> list[list[str]]:
    """Column sets that identify a row: the primary key, then each unique constraint."""
    columns = columns_of(model)
    by_column = {rule.column.name: name for name, rule in columns.rules.items()}
    table = model.__table__
    found = [list(columns.key_fields)]
    for constraint in table.constraints:
        if (
            getattr(constraint, "columns", None) is not None
            and constraint.__class__.__name__ == "UniqueConstraint"
        ):
            found.append([by_column.get(c.name, c.name) for c in constraint.columns])
    for index in table.indexes:
        if index.unique:
            found.append([by_column.get(c.name, c.name) for c in index.columns])
    for column in table.columns:
        if column.unique:
            found.append([by_column.get(column.name, column.name)])
    return [names for names in found if names and all(n in data for n in names)]


def _insert(dialect: str, model: type[Any]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` where the database has it."""
    if dialect == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(model).on_conflict_do_nothing()
    return insert(model)


async def checked_create(
    session: AsyncSession,
    model: type[Any],
    step: Step,
    data: Mapping[str, Any],
    returning: Sequence[Any],
    checks: Checks,
) -> Sequence[Any] | None:
    """Insert one row; where its key or unique columns exist already, decide the conflict.

    ``INSERT ... ON CONFLICT DO NOTHING``: no savepoint, and a row that exists
    is found by the empty RETURNING. An existing row equal to the create is
    left as it is (``skip_if_equal``).

    Returns:
        The ``returning`` values of the row written (or found equal).

    Raises:
        ConflictRejected: The policy rejected the conflict.
    """
    dialect = session.get_bind().dialect.name
    statement = _insert(dialect, model).values(**data).returning(*returning)
    rows = (await session.execute(statement)).all()
    if rows:
        return rows[0]
    if checks.strict:
        raise ConflictSuspected(step.step_id)
    return await _exists(session, model, step, data, returning, checks)


async def checked_bulk_create(
    session: AsyncSession,
    model: type[Any],
    step: Step,
    records: Sequence[Mapping[str, Any]],
    checks: Checks,
) -> None:
    """Insert a bulk create's rows; decide, row by row, each whose key or unique columns exist.

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING <key>`` per run of rows
    with the same columns, as an unchecked bulk insert costs; only the rows
    whose key did not come back are looked at, each as :func:`checked_create`
    decides one. Rows whose key the database makes (no key given) are
    inserted one by one, since nothing else tells which of them was refused.

    Raises:
        ConflictRejected: The policy rejected a conflict.
    """
    key_fields = columns_of(model).key_fields
    keys = [getattr(model, name) for name in key_fields]
    if not all(name in record for record in records for name in key_fields):
        for record in records:
            await checked_create(session, model, step, record, keys, checks)
        return
    dialect = session.get_bind().dialect.name
    made: set[tuple[Any, ...]] = set()
    for run in _runs(records):
        statement = _insert(dialect, model).returning(*keys)
        made.update(tuple(row) for row in (await session.execute(statement, run)).all())
    if len(made) == len(records):
        return
    for record in records:
        if tuple(record[name] for name in key_fields) in made:
            continue
        if checks.strict:
            raise ConflictSuspected(step.step_id)
        await _exists(session, model, step, record, keys, checks)


def _runs(records: Sequence[Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive records with the same columns (one executemany each)."""
    runs: list[list[dict[str, Any]]] = []
    for record in records:
        if runs and runs[-1][0].keys() == record.keys():
            runs[-1].append(dict(record))
        else:
            runs.append([dict(record)])
    return runs


async def _exists(
    session: AsyncSession,
    model: type[Any],
    step: Step,
    data: Mapping[str, Any],
    returning: Sequence[Any],
    checks: Checks,
) -> Sequence[Any] | None:
    """Find the row a create met, decide the ``insert_exists`` conflict, return the row."""
    dialect = session.get_bind().dialect.name
    theirs = None
    key: dict[str, Any] = {}
    for names in _candidate_keys(model, data):
        key = {n: data[n] for n in names}
        theirs = await current(session, model, [equals(model, n, data[n], dialect) for n in names])
        if theirs is not None:
            break
    kind = ConflictKind.INSERT_EXISTS
    mine = dict(data)
    if theirs is None:  # an exclusion or partial constraint: nothing to compare with
        met(
            checks, step, key, kind, ({}, mine, {}), ConflictPolicy.REJECT, ConflictOutcome.REJECTED
        )
        return None
    differing = [f for f in data if not same(theirs.get(f), data[f])]
    shown = {f: theirs.get(f) for f in data}
    key_fields = set(columns_of(model).key_fields)
    where = [getattr(model, n) == theirs[n] for n in columns_of(model).key_fields]
    if not differing:
        policy = checks.policies.of_model(step.model)
        met(checks, step, key, kind, ({}, mine, shown), policy, ConflictOutcome.SKIPPED_EQUAL)
    else:
        decision = decide_row(
            model,
            step.model,
            checks.policies,
            [f for f in differing if f not in key_fields],
            {},
            {f: v for f, v in data.items() if f not in key_fields},
            theirs,
        )
        if any(f in key_fields for f in differing):
            decision.outcome, decision.write = ConflictOutcome.REJECTED, {}
        met(checks, step, key, kind, ({}, mine, shown), decision.policy, decision.outcome)
        if decision.write:
            await session.execute(
                sa_update(model)
                .where(*where)
                .values(**decision.write)
                .execution_options(synchronize_session=False)
            )
    rows = (await session.execute(select(*returning).where(*where))).all()
    return rows[0] if rows else None
