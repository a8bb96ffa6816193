"""Plan a batch as a few large statements instead of many small ones.

A batch whose transactions only insert and update, with no ``ref()``, can be
applied as one multi-row INSERT per table (in foreign-key order) followed by
the updates in their original order. The result is the same as applying the
transactions one by one, savepoint by savepoint, whenever both succeed; the
executor tries the plan first, inside one savepoint, and falls back to the
one-by-one path when anything in it fails, so every error still belongs to
the transaction that caused it.
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


def _key(step: Step, record: dict[str, Any]) -> tuple[str, tuple[Any, ...]] | None:
    if any(name not in record for name in step.key_fields):
        return None
    return step.model, tuple(record[name] for name in step.key_fields)


def plan(transactions: Sequence[Transaction], registry: ModelRegistry) -> Plan | None:
    """Group a batch's writes, or return ``None`` when grouping could change its result.

    Args:
        transactions: In buffer order, already checked against the registry.
        registry: The mapped classes.

    Returns:
        The plan, or ``None`` for a batch with deletes, references, an update
        of a record that a later transaction creates, or tables in a cycle.
    """
    rows: dict[str, list[dict[str, Any]]] = {}
    updates: list[Step] = []
    created_at: dict[tuple[str, tuple[Any, ...]], int] = {}
    updated: list[tuple[int, tuple[str, tuple[Any, ...]] | None]] = []
    for index, tx in enumerate(transactions):
        for step in tx.steps:
            if step.operation not in _GROUPABLE or step.refs():
                return None
            if step.operation in (Operation.CREATE, Operation.BULK_CREATE):
                for record in step.records or [step.data or {}]:
                    rows.setdefault(step.model, []).append(dict(record))
                    key = _key(step, record)
                    if key is not None:
                        created_at.setdefault(key, index)
            else:
                updates.append(step)
                for record in step.records or [step.key or {}]:
                    updated.append((index, _key(step, record)))
    for index, key in updated:
        if key is None or created_at.get(key, -1) > index:
            return None  # it would find a row that, in order, does not exist yet
    tables: dict[Table, str] = {}
    for name in rows:
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
    return Plan([(tables[t], rows[tables[t]]) for t in ordered], updates)
