"""Checked creates: ``INSERT ... ON CONFLICT DO NOTHING``, then find and decide the row met."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy import update as sa_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ccat_buffering.columns import columns_of
from ccat_buffering.conflicts.checked import Checks, ConflictSuspected, current, same, settle
from ccat_buffering.conflicts.decide import decide_row
from ccat_buffering.conflicts.kinds import (
    Conflict,
    ConflictKind,
    ConflictOutcome,
    ConflictPolicy,
)
from ccat_buffering.conflicts.statements import equals
from ccat_buffering.models import Step

__all__ = ["checked_create"]


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
    module = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(model).values(**data).on_conflict_do_nothing().returning(*returning)
    if dialect not in ("postgresql", "sqlite"):
        statement = insert(model).values(**data).returning(*returning)
    rows = (await session.execute(statement)).all()
    if rows:
        return rows[0]
    if checks.strict:
        raise ConflictSuspected(step.step_id)
    theirs = None
    key: dict[str, Any] = {}
    for names in _candidate_keys(model, data):
        key = {n: data[n] for n in names}
        theirs = await current(session, model, [equals(model, n, data[n], dialect) for n in names])
        if theirs is not None:
            break
    name = step.model
    if theirs is None:  # an exclusion or partial constraint: nothing to compare with
        policy = ConflictPolicy.REJECT
        settle(
            checks,
            Conflict(
                step.step_id,
                name,
                key,
                ConflictKind.INSERT_EXISTS,
                {},
                dict(data),
                {},
                policy,
                ConflictOutcome.REJECTED,
            ),
        )
        return None
    differing = [f for f in data if not same(theirs.get(f), data[f])]
    shown = {f: theirs.get(f) for f in data}
    where = [getattr(model, n) == theirs[n] for n in columns_of(model).key_fields]
    if not differing:
        policy = checks.policies.of_model(name)
        settle(
            checks,
            Conflict(
                step.step_id,
                name,
                key,
                ConflictKind.INSERT_EXISTS,
                {},
                dict(data),
                shown,
                policy,
                ConflictOutcome.SKIPPED_EQUAL,
            ),
        )
    else:
        key_fields = set(columns_of(model).key_fields)
        decision = decide_row(
            model,
            name,
            checks.policies,
            [f for f in differing if f not in key_fields],
            {},
            {f: v for f, v in data.items() if f not in key_fields},
            theirs,
        )
        if any(f in key_fields for f in differing):
            decision.outcome, decision.write = ConflictOutcome.REJECTED, {}
        settle(
            checks,
            Conflict(
                step.step_id,
                name,
                key,
                ConflictKind.INSERT_EXISTS,
                {},
                dict(data),
                shown,
                decision.policy,
                decision.outcome,
            ),
        )
        if decision.write:
            await session.execute(
                sa_update(model)
                .where(*where)
                .values(**decision.write)
                .execution_options(synchronize_session=False)
            )
    rows = (await session.execute(select(*returning).where(*where))).all()
    return rows[0] if rows else None
