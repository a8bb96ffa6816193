"""The base of a write: what the writer saw, filled in when a transaction is submitted.

A step states its base itself (``expected=``, ``expected_version=``), or the
coordinator takes it from the writing site's own view of the row when the
transaction is submitted: through the same code as ``reads`` (the replica
overlaid by the site's buffered writes at a secondary site, the main database
at a main site), and, for later steps of one transaction, over what its earlier
steps write. The base of an update is the value of each field it changes; of a
delete, the row; of a model with a ``version_id_col``, also its version (and
the update sets the next one). Columns a write fills by itself are not part of
a base: Python ``onupdate=`` columns, the version, and the ``newer_wins``
write-time column.

A row the site cannot see (not replicated yet, or the view not readable in
time) gives no base: the step is then checked only for the row's existence.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ccat_buffering.columns import ModelColumns, columns_of
from ccat_buffering.conflicts.bulk import gather_bases, row_updates
from ccat_buffering.conflicts.kinds import ConflictPolicies
from ccat_buffering.errors import DatabaseUnavailableError
from ccat_buffering.models import Operation, Ref, Step, Transaction
from ccat_buffering.registry import ModelRegistry

__all__ = ["View", "stamp_write_time", "with_bases"]

View = Callable[[str, Mapping[str, Any]], Awaitable[Mapping[str, Any] | None]]
"""Reads one row as the writing site sees it (``Reads.get``), or ``None``."""

ViewMany = Callable[
    [str, Sequence[Mapping[str, Any]]], Awaitable[Sequence[Mapping[str, Any] | None]]
]
"""Reads several rows at once as the site sees them (``Reads.get_many``), in order."""

Seen = dict[tuple[str, tuple[Any, ...]], dict[str, Any] | None]
"""Rows as earlier steps of the transaction leave them, by model and key (``None``: deleted)."""

_WRITES = (Operation.CREATE, Operation.UPDATE, Operation.BULK_CREATE, Operation.BULK_UPDATE)


def stamp_write_time(
    transaction: Transaction, registry: ModelRegistry, now: dt.datetime
) -> Transaction:
    """Fill the ``newer_wins`` write-time column of each write that does not set it.

    Args:
        transaction: A converted transaction.
        registry: The models and their conflict policies.
        now: The write time.

    Returns:
        The transaction, stamped (itself when nothing needed a stamp).
    """
    policies = registry.conflict_policies
    steps, changed = [], False
    for step in transaction.steps:
        clock = policies.write_time_of(step.model)
        if clock is None or step.operation not in _WRITES:
            steps.append(step)
            continue
        columns = columns_of(registry.model(step.model))
        stamp = columns.convert({clock: now}, f"{step.model}.{clock}")[clock]
        update: dict[str, Any] = {}
        if step.data is not None and clock not in step.data:
            update["data"] = {**step.data, clock: stamp}
        if step.records is not None and any(clock not in r for r in step.records):
            update["records"] = [{clock: stamp, **r} for r in step.records]
        steps.append(step.model_copy(update=update) if update else step)
        changed = changed or bool(update)
    return transaction.model_copy(update={"steps": steps}) if changed else transaction


def _own_columns(columns: ModelColumns, policies: ConflictPolicies, model: str) -> set[str]:
    """Columns a write fills by itself: never part of a base."""
    own = {name for name, rule in columns.rules.items() if rule.column.onupdate is not None}
    if columns.version is not None:
        own.add(columns.version)
    clock = policies.write_time_of(model)
    if clock is not None:
        own.add(clock)
    return own | set(columns.key_fields)


async def with_bases(
    transaction: Transaction,
    view: View,
    registry: ModelRegistry,
    many: ViewMany | None = None,
) -> Transaction:
    """Give every update and delete (and bulk-updated row) that states no base the one seen now.

    Args:
        transaction: A converted transaction.
        view: Reads a row as the site sees it.
        registry: The models and their conflict policies.
        many: Reads a bulk update's rows in one call (else one ``view`` each).

    Returns:
        The transaction with bases (itself when no step needed one).
    """
    seen: Seen = {}
    steps = []
    for step in transaction.steps:
        if step.operation in (Operation.CREATE, Operation.BULK_CREATE):
            columns = columns_of(registry.model(step.model))
            for record in step.records or [step.data or {}]:
                created = tuple((f, record.get(f)) for f in columns.key_fields)
                seen[(step.model, created)] = dict(record)
        if step.operation is Operation.BULK_UPDATE:
            updates = row_updates(step)
            if many is not None:
                await _look_many(many, updates, seen)
            rows = [await _base_one(row, view, registry, seen) for row in updates]
            steps.append(gather_bases(step, rows))
        elif step.operation in (Operation.UPDATE, Operation.DELETE):
            steps.append(await _base_one(step, view, registry, seen))
        else:
            steps.append(step)
    if all(new is old for new, old in zip(steps, transaction.steps, strict=True)):
        return transaction
    return transaction.model_copy(update={"steps": steps, "format_version": 2})


async def _base_one(step: Step, view: View, registry: ModelRegistry, seen: Seen) -> Step:
    """One update or delete with the base the site sees (``step`` itself if it has one)."""
    key = step.key or {}
    at = (step.model, tuple(key.items()))
    row = seen[at] if at in seen else await _look(view, step, key)
    if row is None or any(isinstance(v, Ref) for v in key.values()):
        based = step
    else:
        based = _based(step, row, registry)
    seen[at] = None if step.operation is Operation.DELETE else {**(row or {}), **(step.data or {})}
    return based


async def _look_many(many: ViewMany, updates: Sequence[Step], seen: Seen) -> None:
    """Put in ``seen`` the rows of ``updates`` it does not hold yet, read in one call.

    A row the site does not see is put as ``None``: the update gets no base.
    """
    keys = {
        (u.model, tuple((u.key or {}).items())): u.key or {}
        for u in updates
        if not any(isinstance(v, Ref) for v in (u.key or {}).values())
    }
    wanted = [(at, key) for at, key in keys.items() if at not in seen]
    if not wanted:
        return
    try:
        rows: Sequence[Mapping[str, Any] | None] = await many(
            updates[0].model, [key for _, key in wanted]
        )
    except DatabaseUnavailableError:
        rows = [None] * len(wanted)  # no bases, as for one row (not a timeout a row)
    for (at, _), row in zip(wanted, rows, strict=True):
        seen[at] = None if row is None else dict(row)  # None: no base


async def _look(view: View, step: Step, key: Mapping[str, Any]) -> dict[str, Any] | None:
    if any(isinstance(v, Ref) for v in key.values()):
        return None
    try:
        row = await view(step.model, key)
    except DatabaseUnavailableError:
        return None  # no base: the step is checked for the row's existence only
    return None if row is None else dict(row)


def _based(step: Step, row: Mapping[str, Any], registry: ModelRegistry) -> Step:
    """``step`` with the base ``row`` gives it; a stated base keeps its values.

    A writer that states the values it saw but not the version (``expected=``
    without ``expected_version=``) gets the version from the view, so that
    the update checks and bumps it as the ORM's would.
    """
    columns = columns_of(registry.model(step.model))
    update: dict[str, Any] = {}
    if not step.has_base:
        own = _own_columns(columns, registry.conflict_policies, step.model)
        if step.operation is Operation.UPDATE:
            names = [n for n in (step.data or {}) if n not in own and n in row]
        else:
            names = [n for n in row if n not in own and n in columns.rules]
        update["expected"] = columns.convert({n: row[n] for n in names}, f"{step.step_id} base")
    elif step.expected_version is not None:
        return step
    if columns.version is not None and row.get(columns.version) is not None:
        seen_version = row[columns.version]
        update["expected_version"] = seen_version
        if step.operation is Operation.UPDATE:
            update["data"] = {
                **(step.data or {}),
                columns.version: columns.next_version(seen_version),
            }
    return step.model_copy(update=update) if update else step
