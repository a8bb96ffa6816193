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
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table
from sqlalchemy.schema import sort_tables

from ccat_buffering.write.columns import columns_of
from ccat_buffering.write.models import Operation, Step, Transaction
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["Plan", "plan"]

_GROUPABLE = {Operation.CREATE, Operation.BULK_CREATE, Operation.UPDATE, Operation.BULK_UPDATE}
# The members as module names: reading an enum member off its class costs about
# 100 ns on Python 3.11 (the class's __getattr__), a name a few; asked per step.
_CREATE = Operation.CREATE
_BULK_CREATE = Operation.BULK_CREATE
_UPDATE = Operation.UPDATE


@dataclass
class Plan:
    """Rows to insert per model, in foreign-key order, then updates in order."""

    inserts: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    updates: list[Step] = field(default_factory=list)


Position = tuple[int, int]
"""(step number in the batch, record number in the step): the order of one by one."""

Columns = tuple[str, ...]


class _Schema:
    """The registry's tables as the plan checks them: by table and column name.

    Column names, not attribute names, because two mapped classes may share a
    table (single-table inheritance) under different attributes.
    """

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._tables: dict[str, Table | None] = {}
        self._names: dict[str, dict[str, str]] = {}
        self._keys: dict[str, Columns] = {}
        self._generated: dict[tuple[str, tuple[str, ...]], bool] = {}
        self.size = len(registry)
        self.referenced: dict[Table, set[str]] = {}
        self.foreign: dict[Table, list[tuple[Columns, Table, Columns]]] = {}
        for name in registry:
            table = self.table(name)
            if table is None or table in self.foreign:
                continue
            self.foreign[table] = []
            for constraint in table.foreign_key_constraints:
                target = constraint.referred_table
                local = tuple(c.name for c in constraint.columns)
                remote = tuple(e.column.name for e in constraint.elements)
                self.foreign[table].append((local, target, remote))
                self.referenced.setdefault(target, set()).update(remote)

    def table(self, model: str) -> Table | None:
        if model not in self._tables:
            table = self.registry.mapper(model).local_table
            self._tables[model] = table if isinstance(table, Table) else None
        return self._tables[model]

    def same_names(self, model: str) -> bool:
        """Whether ``model``'s attributes are named as their columns (rows need no renaming)."""
        names = self._names.get(model)
        if names is None:
            mapper = self.registry.mapper(model)
            renamed = {a.key: a.columns[0].name for a in mapper.column_attrs}
            names = self._names[model] = {k: v for k, v in renamed.items() if k != v}
        return not names

    def row(self, model: str, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` by column name (``record`` itself where the names are the same)."""
        if self.same_names(model):
            return record
        names = self._names[model]
        return {names.get(k, k): v for k, v in record.items()}

    def generated(self, model: str, record: dict[str, Any]) -> bool:
        """Whether the database completes a created row with these fields (``RETURNING``)."""
        shape = (model, tuple(record))
        found = self._generated.get(shape)
        if found is None:
            found = self._generated[shape] = bool(
                columns_of(self.registry.model(model)).generated_fields(record)
            )
        return found

    def key_columns(self, model: str) -> Columns:
        found = self._keys.get(model)
        if found is None:
            found = self._keys[model] = tuple(
                c.name for c in self.registry.mapper(model).primary_key
            )
        return found


_SCHEMAS: weakref.WeakKeyDictionary[ModelRegistry, _Schema] = weakref.WeakKeyDictionary()


def _schema_of(registry: ModelRegistry) -> _Schema:
    """The registry's schema, read once (again when a model is registered)."""
    schema = _SCHEMAS.get(registry)
    if schema is None or schema.size != len(registry):
        schema = _SCHEMAS[registry] = _Schema(registry)
    return schema


class _Created:
    """Where in the batch each created row first appears, by any tuple of its columns."""

    def __init__(self) -> None:
        self.rows: dict[Table, list[tuple[Position, dict[str, Any]]]] = {}
        self._index: dict[tuple[Table, Columns], dict[Any, Position]] = {}

    def index(self, table: Table, columns: Columns) -> dict[Any, Position]:
        """The first position of each value of ``columns`` among ``table``'s created rows.

        Keyed by the value itself for one column (the common foreign key), else
        by the tuple of values.
        """
        index = self._index.get((table, columns))
        if index is None:
            rows = reversed(self.rows.get(table, ()))  # the first one written last: it stays
            if len(columns) == 1:
                (column,) = columns
                index = {row[column]: position for position, row in rows if column in row}
            else:
                index = {
                    tuple(row[c] for c in columns): position
                    for position, row in rows
                    if all(c in row for c in columns)
                }
            self._index[(table, columns)] = index
        return index

    def first(self, table: Table, columns: Columns, values: tuple[Any, ...]) -> Position | None:
        return self.index(table, columns).get(values[0] if len(columns) == 1 else values)


def plan(
    transactions: Sequence[Transaction], registry: ModelRegistry, *, without_refs: bool = False
) -> Plan | None:
    """Group a batch's writes, or return ``None`` when grouping could change its result.

    Args:
        transactions: In buffer order, already checked against the registry.
        registry: The mapped classes.
        without_refs: The caller found no ``ref()`` in them (not looked for again).

    Returns:
        The plan, or ``None`` for a batch with deletes, references, a create
        whose row the database completes (its values come back by ``RETURNING``), an update
        of a row that a later step creates, an update of a key or of a column
        a foreign key refers to (a cascade would reach rows inserted earlier
        in the plan than in order), a foreign key to a row that a later step
        creates, two classes created in one table, or tables in a cycle.
    """
    schema = _schema_of(registry)
    created = _Created()
    models: dict[Table, str] = {}
    inserts: dict[str, list[dict[str, Any]]] = {}
    updates: list[tuple[Position, Step, dict[str, Any]]] = []
    steps: list[Step] = []
    made = created.rows
    # Per model, once per batch: its table and the rows created in it so far
    # (what every create step of the model would otherwise look up again).
    creating: dict[
        str, tuple[list[dict[str, Any]], list[tuple[Position, dict[str, Any]]], bool]
    ] = {}
    generated = schema._generated
    number = -1
    for tx in transactions:
        for step in tx.steps:
            number += 1
            values = step.__dict__  # the fields, without an attribute lookup each
            model, op = values["model"], values["operation"]
            if op is _CREATE or op is _BULK_CREATE:
                if not without_refs and step.has_refs:
                    return None
                data = values["data"] or {}
                if (
                    op is _CREATE
                    and generated.get((model, tuple(data))) is not False
                    and schema.generated(model, data)
                ):
                    return None  # its computed values come back one row at a time (RETURNING)
                records = values["records"] or [data]
                into = creating.get(model)
                if into is None:
                    table = schema.table(model)
                    if table is None:
                        return None
                    if models.setdefault(table, model) != model:
                        return None  # two classes of one table: their rows' order matters
                    rows = inserts[model] = []
                    positions = made[table] = []
                    same = schema.same_names(model)
                    creating[model] = (rows, positions, same)
                else:
                    rows, positions, same = into
                rows += records  # the step's own dicts: the message only reads them
                if same and len(records) == 1:  # a create: no comprehension for one row
                    positions.append(((number, 0), records[0]))
                elif same:
                    positions += [((number, i), r) for i, r in enumerate(records)]
                else:
                    positions += [
                        ((number, i), schema.row(model, r)) for i, r in enumerate(records)
                    ]
                continue
            table = schema.table(model)
            if op not in _GROUPABLE or table is None or (not without_refs and step.has_refs):
                return None
            steps.append(step)
            key_columns = schema.key_columns(step.model)
            referenced = schema.referenced.get(table, set()) | set(key_columns)
            if op is _UPDATE:
                changed = set(schema.row(step.model, step.data or {}))
                records = [{**(step.key or {}), **(step.data or {})}]
            else:
                records = step.records or []
                changed = {c for r in records for c in schema.row(step.model, r)} - set(key_columns)
            if changed & referenced:
                return None  # a new key, or a cascade, would reach rows the plan moved
            for i, record in enumerate(records):
                row = schema.row(step.model, record)
                if any(c not in row for c in key_columns):
                    return None
                updates.append(((number, i), step, row))
    for position, step, row in updates:
        table = schema.table(step.model)
        assert table is not None
        key_columns = schema.key_columns(step.model)
        first = created.first(table, key_columns, tuple(row[c] for c in key_columns))
        if first is not None and first > position:
            return None  # it would find a row that, in order, does not exist yet
    for table, made_rows in made.items():
        for local, target, remote in schema.foreign.get(table, ()):
            # Only a foreign key into a table the batch creates rows in can point at a later row.
            if target in made and not _only_earlier(
                made_rows, local, created.index(target, remote)
            ):
                return None
    for position, step, row in updates:
        table = schema.table(step.model)
        assert table is not None
        if not _targets_exist_before(schema.foreign.get(table, []), row, position, created):
            return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            ordered = sort_tables(models)
        except Exception:
            return None  # a cycle: only the original order is safe
    return Plan([(models[t], inserts[models[t]]) for t in ordered], steps)


def _only_earlier(
    rows: list[tuple[Position, dict[str, Any]]], local: Columns, index: dict[Any, Position]
) -> bool:
    """Whether no row's foreign key (``local``) finds in ``index`` a row created after it."""
    if len(local) == 1:  # the common foreign key: one lookup per row, no tuple
        (column,) = local
        for position, row in rows:
            value = row.get(column)
            if value is not None:
                found = index.get(value)
                if found is not None and found > position:
                    return False
        return True
    for position, row in rows:
        if all(c in row and row[c] is not None for c in local):
            found = index.get(tuple(row[c] for c in local))
            if found is not None and found > position:
                return False
    return True


def _targets_exist_before(
    links: list[tuple[Columns, Table, Columns]],
    row: dict[str, Any],
    position: Position,
    created: _Created,
) -> bool:
    """Whether no foreign key of ``row`` (of ``links``) points at a row the batch creates later."""
    for local, target, remote in links:
        if len(local) == 1:  # the common foreign key: no generator per row
            value = row.get(local[0])
            if value is None:
                continue
            values: tuple[Any, ...] = (value,)
        elif all(c in row and row[c] is not None for c in local):
            values = tuple(row[c] for c in local)
        else:
            continue
        made = created.first(target, remote, values)
        if made is not None and made > position:
            return False
    return True
