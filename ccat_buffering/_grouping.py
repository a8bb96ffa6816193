"""Plan a batch as a few large statements instead of many small ones.

A batch whose transactions only insert and update, with no ``ref()``, can be
applied as one multi-row INSERT per table (in foreign-key order) followed by
the updates in their original order. That reorders writes, so the plan is
made only when the reordering cannot change an outcome: every update finds
only rows created before it in buffer order, and every foreign key that
points at a row the batch creates points at one created before it. Then the
result is the same as applying the transactions one by one, savepoint by
savepoint, whenever both succeed; the executor tries the plan first, inside
one savepoint, and falls back to the one-by-one path when anything in it
fails, so every error still belongs to the transaction that caused it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table
from sqlalchemy.schema import sort_tables

from ccat_buffering.models import Operation, Step, Transaction
from ccat_buffering.registry import ModelRegistry

__all__ = ["Plan", "plan"]

_GROUPABLE = {Operation.CREATE, Operation.BULK_CREATE, Operation.UPDATE, Operation.BULK_UPDATE}


@dataclass
class Plan:
    """Rows to insert per model, in foreign-key order, then updates in order."""

    inserts: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    updates: list[Step] = field(default_factory=list)


Position = tuple[int, int]
"""(step number in the batch, record number in the step): the order of one by one."""


def _key(step: Step, record: dict[str, Any]) -> tuple[str, tuple[Any, ...]] | None:
    if any(name not in record for name in step.key_fields):
        return None
    return step.model, tuple(record[name] for name in step.key_fields)


@dataclass(frozen=True)
class _ForeignKey:
    """A foreign key of a model, by attribute names, to another registered model."""

    fields: tuple[str, ...]
    target: str
    target_fields: tuple[str, ...]


def _foreign_keys(registry: ModelRegistry, model: str) -> list[_ForeignKey]:
    mapper = registry.mapper(model)
    table = mapper.local_table
    by_table = {registry.mapper(name).local_table: name for name in registry}
    keys = []
    for constraint in getattr(table, "foreign_key_constraints", ()):
        target_table = constraint.referred_table
        target = by_table.get(target_table)
        if target is None:
            continue
        target_mapper = registry.mapper(target)
        keys.append(
            _ForeignKey(
                tuple(mapper.get_property_by_column(c).key for c in constraint.columns),
                target,
                tuple(
                    target_mapper.get_property_by_column(e.column).key for e in constraint.elements
                ),
            )
        )
    return keys


class _Created:
    """Where in the batch each created row first appears, by any tuple of its fields."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Position, dict[str, Any]]]] = {}
        self._index: dict[tuple[str, tuple[str, ...]], dict[tuple[Any, ...], Position]] = {}

    def add(self, model: str, position: Position, record: dict[str, Any]) -> None:
        self.rows.setdefault(model, []).append((position, record))

    def first(
        self, model: str, fields: tuple[str, ...], values: tuple[Any, ...]
    ) -> Position | None:
        index = self._index.get((model, fields))
        if index is None:
            index = self._index[(model, fields)] = {}
            for position, record in self.rows.get(model, ()):
                if all(f in record for f in fields):
                    index.setdefault(tuple(record[f] for f in fields), position)
        return index.get(values)


def plan(transactions: Sequence[Transaction], registry: ModelRegistry) -> Plan | None:
    """Group a batch's writes, or return ``None`` when grouping could change its result.

    Args:
        transactions: In buffer order, already checked against the registry.
        registry: The mapped classes.

    Returns:
        The plan, or ``None`` for a batch with deletes, references, an update
        of a record that a later step creates, a foreign key to a row that a
        later step creates, or tables in a cycle.
    """
    created = _Created()
    updates: list[tuple[Position, Step, dict[str, Any]]] = []
    number = 0
    for tx in transactions:
        for step in tx.steps:
            if step.operation not in _GROUPABLE or step.refs():
                return None
            records = step.records or [step.data or {}]
            if step.operation in (Operation.CREATE, Operation.BULK_CREATE):
                for i, record in enumerate(records):
                    created.add(step.model, (number, i), dict(record))
            else:
                updates.append(
                    (
                        (number, 0),
                        step,
                        {**(step.key or {}), **(step.data or {})},
                    )
                )
                if step.records is not None:
                    updates.pop()
                    updates.extend(((number, i), step, r) for i, r in enumerate(step.records))
            number += 1
    fks = {
        model: _foreign_keys(registry, model)
        for model in {*created.rows, *(s.model for _, s, _ in updates)}
    }
    for position, step, record in updates:
        key = _key(step, record)
        if key is None:
            return None
        made = created.first(step.model, step.key_fields, key[1])
        if made is not None and made > position:
            return None  # it would find a row that, in order, does not exist yet
        if not _targets_exist_before(fks[step.model], record, position, created):
            return None
    for model, rows in created.rows.items():
        for position, record in rows:
            if not _targets_exist_before(fks[model], record, position, created):
                return None
    tables: dict[Table, str] = {}
    for name in created.rows:
        table = registry.mapper(name).local_table
        if not isinstance(table, Table):
            return None
        tables[table] = name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            ordered = sort_tables(tables)
        except Exception:
            return None  # a cycle: only the original order is safe
    inserts = [(tables[t], [r for _, r in created.rows[tables[t]]]) for t in ordered]
    steps: list[Step] = []
    for _, step, _ in updates:
        if not steps or steps[-1] is not step:
            steps.append(step)
    return Plan(inserts, steps)


def _targets_exist_before(
    fks: list[_ForeignKey], record: dict[str, Any], position: Position, created: _Created
) -> bool:
    """Whether no foreign key of ``record`` points at a row the batch creates later."""
    for fk in fks:
        if not all(f in record and record[f] is not None for f in fk.fields):
            continue
        made = created.first(fk.target, fk.target_fields, tuple(record[f] for f in fk.fields))
        if made is not None and made > position:
            return False
    return True
