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
from itertools import repeat
from operator import gt
from typing import Any

from sqlalchemy import Table
from sqlalchemy.schema import sort_tables

from ccat_buffering.drain._pipeline import MAX_PARAMETERS
from ccat_buffering.write.columns import columns_of
from ccat_buffering.write.models import Operation, Step, Transaction
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["Chunk", "Plan", "Planner", "plan"]

_GROUPABLE = {Operation.CREATE, Operation.BULK_CREATE, Operation.UPDATE, Operation.BULK_UPDATE}
# The members as module names: reading an enum member off its class costs about
# 100 ns on Python 3.11 (the class's __getattr__), a name a few; asked per step.
_CREATE = Operation.CREATE
_BULK_CREATE = Operation.BULK_CREATE
_UPDATE = Operation.UPDATE
_ABSENT = object()  # a row's value of a column it does not have
# What a created row's fields are (the small ints are shared objects: compared by identity).
_FITS, _GENERATED, _UNKNOWN = 0, 1, 2


Columns = tuple[str, ...]


@dataclass
class Plan:
    """Rows to insert per model, in foreign-key order, then updates in order.

    ``chunks`` holds the same rows as ``inserts``, cut into the pipeline's
    multi-row INSERTs (see :class:`Chunk`).
    """

    inserts: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    updates: list[Step] = field(default_factory=list)
    chunks: list[tuple[str, list[Chunk]]] = field(default_factory=list)


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
        # By model, then by a created row's fields: whether they are the model's
        # and whether the database completes such a row (_FITS, _GENERATED, _UNKNOWN).
        self.shapes_by_model: dict[str, dict[Columns, tuple[Columns, int]]] = {}
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
        return bool(columns_of(self.registry.model(model)).generated_fields(record))

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


class Chunk:
    """Consecutive created rows of one model and column set: one multi-row INSERT.

    Attributes:
        keys: The first row's fields, in its order (the statement's columns).
        rows: The rows (the steps' own dicts), in order.
        room: How many rows it may hold, ``MAX_PARAMETERS // len(keys)``.
    """

    __slots__ = ("keys", "room", "rows")

    def __init__(self, row: dict[str, Any], shape: Columns) -> None:
        self.keys = shape
        self.rows = [row]
        self.room = MAX_PARAMETERS // max(len(shape), 1)


class _Creates:
    """One model's created rows in a batch: in order, where each is, and their chunks."""

    __slots__ = ("chunks", "last", "made", "positions", "rows", "same", "shapes", "table")

    def __init__(
        self, table: Table, same: bool, shapes: dict[Columns, tuple[Columns, int]]
    ) -> None:
        self.table = table
        self.rows: list[dict[str, Any]] = []  # the steps' own dicts: the message only reads them
        self.same = same  # attributes named as their columns: the rows are the made rows
        self.made: list[dict[str, Any]] = self.rows if same else []  # by column name
        self.positions: list[int] = []
        self.chunks: list[Chunk] = []
        self.last: Chunk | None = None  # the chunk a next row of the same fields joins
        self.shapes = shapes  # by fields: the first such tuple, and _FITS, _GENERATED or _UNKNOWN

    def add(self, row: dict[str, Any], shape: Columns) -> None:
        """A row for the last chunk (its fields, in any order) if there is room, else a new one."""
        last = self.last
        if last is not None and len(last.rows) < last.room and row.keys() == last.rows[0].keys():
            last.rows.append(row)
        else:
            self.last = Chunk(row, shape)
            self.chunks.append(self.last)


class _Created:
    """Where in the batch each created row first appears, by any tuple of its columns."""

    def __init__(self, tables: dict[Table, _Creates]) -> None:
        self.tables = tables
        self._index: dict[tuple[Table, Columns], dict[Any, int]] = {}

    def index(self, table: Table, columns: Columns) -> dict[Any, int]:
        """The first position of each value of ``columns`` among ``table``'s created rows.

        Keyed by the value itself for one column (the common foreign key), else
        by the tuple of values.
        """
        index = self._index.get((table, columns))
        if index is None:
            creates = self.tables.get(table)
            if creates is None:
                index = {}
            else:
                # The first one written last: it stays.
                if len(columns) == 1:
                    # In C, not a comprehension: a row without the column goes under _ABSENT.
                    (column,) = columns
                    made = reversed(creates.made)
                    values = map(dict.get, made, repeat(column), repeat(_ABSENT))
                    index = dict(zip(values, reversed(creates.positions), strict=True))
                    index.pop(_ABSENT, None)
                else:
                    rows = zip(reversed(creates.positions), reversed(creates.made), strict=True)
                    index = {
                        tuple(row[c] for c in columns): position
                        for position, row in rows
                        if all(c in row for c in columns)
                    }
            self._index[(table, columns)] = index
        return index

    def first(self, table: Table, columns: Columns, values: tuple[Any, ...]) -> int | None:
        return self.index(table, columns).get(values[0] if len(columns) == 1 else values)


class Planner:
    """Plans a batch fed one transaction at a time, in buffer order (see :func:`plan`).

    The batch's creates are gathered per model as they come, already cut into
    the chunks of the pipeline's multi-row INSERTs (:class:`Chunk`), so that
    the plan and the message take one pass over the steps.

    Args:
        registry: The mapped classes.
        without_refs: The caller found no ``ref()`` in what it feeds (not looked for again).
    """

    def __init__(self, registry: ModelRegistry, *, without_refs: bool = False) -> None:
        self.schema = _schema_of(registry)
        self.without_refs = without_refs
        self.possible = True  # until a step makes grouping unsafe
        # It stopped at a created row with a field its model does not have (the
        # transaction's check says which): what it took is no plan any more.
        self.unknown = False
        self._models: dict[Table, str] = {}
        # Per model: its table and the rows created in it so far, looked up once per step.
        self._creating: dict[str, _Creates] = {}
        self._tables: dict[Table, _Creates] = {}
        self._updates: list[tuple[int, Step, dict[str, Any]]] = []
        self._steps: list[Step] = []
        self._number = 0  # the next record's position: the order of one by one

    def add(self, tx: Transaction, steps: Sequence[Step] | None = None) -> bool:
        """Take ``tx``'s steps; ``False`` (nothing more taken) when grouping could change them.

        Args:
            tx: The next transaction, in buffer order.
            steps: Its steps, where the caller read them already.
        """
        if self.possible and not self.take(tx.steps if steps is None else steps):
            self.possible = False
        return self.possible

    def take(self, steps: Sequence[Step]) -> bool:
        """:meth:`add` of a transaction's steps: after ``False``, the planner is of no use."""
        creating = self._creating
        number = self._number
        for step in steps:
            values = step.__dict__  # the fields, without an attribute lookup each
            model, op = values["model"], values["operation"]
            if op is not _CREATE and op is not _BULK_CREATE:
                if not self._update(step, op, number):
                    return False
                number += 1 if op is _UPDATE else len(step.records or ())
                continue
            if not self.without_refs and step.has_refs:
                return False
            into = creating.get(model)
            if into is None:
                into = self._creates(model)
                if into is None:
                    return False
            data = values["data"]
            records = values["records"]
            shapes = into.shapes
            if op is _CREATE or data or not records:
                if data is None:
                    data = {}
                shape = tuple(data)
                found = shapes.get(shape)
                if found is None:
                    found = self._state(into, model, data, shape)
                shape, state = found  # the first tuple of these fields: compared by identity
                if state is _UNKNOWN:
                    self.unknown = True
                    return False
                if state is _GENERATED and op is _CREATE:
                    return False  # its computed values come back one row at a time (RETURNING)
            if not records:
                records = (data,)
            # Each row: its place in the batch, and its chunk (inlined: a few per step).
            rows, positions = into.rows, into.positions
            for record in records:
                if record is not data:  # a bulk create's
                    shape = tuple(record)
                    found = shapes.get(shape)
                    if found is None:
                        found = self._state(into, model, record, shape)
                    shape, state = found
                    if state is _UNKNOWN:
                        self.unknown = True
                        return False
                rows.append(record)
                positions.append(number)
                number += 1
                if not into.same:
                    into.made.append(self.schema.row(model, record))
                last = into.last
                if last is not None and last.keys is shape and len(last.rows) < last.room:
                    last.rows.append(record)
                else:
                    into.add(record, shape)
        self._number = number
        return True

    def _state(
        self, into: _Creates, model: str, row: dict[str, Any], shape: Columns
    ) -> tuple[Columns, int]:
        """What created rows of fields ``shape`` are: ``_FITS``, ``_GENERATED`` or ``_UNKNOWN``.

        Unknown: a field the model does not have; generated: the database
        completes such a row (a create's values come back by ``RETURNING``).
        """
        if not self.schema.registry.fields(model).issuperset(shape):
            state = _UNKNOWN
        elif self.schema.generated(model, row):
            state = _GENERATED
        else:
            state = _FITS
        found = (shape, state)
        if len(into.shapes) < 1024:  # the field sets of a model's rows: a few
            into.shapes[shape] = found
        return found

    def _creates(self, model: str) -> _Creates | None:
        """The model's creates, first met: ``None`` when its rows cannot be grouped."""
        schema = self.schema
        table = schema.table(model)
        if table is None:
            return None
        if self._models.setdefault(table, model) != model:
            return None  # two classes of one table: their rows' order matters
        shapes = schema.shapes_by_model.setdefault(model, {})
        into = self._creating[model] = self._tables[table] = _Creates(
            table, schema.same_names(model), shapes
        )
        return into

    def _update(self, step: Step, op: Operation, number: int) -> bool:
        schema = self.schema
        table = schema.table(step.model)
        if op not in _GROUPABLE or table is None or (not self.without_refs and step.has_refs):
            return False
        self._steps.append(step)
        key_columns = schema.key_columns(step.model)
        referenced = schema.referenced.get(table, set()) | set(key_columns)
        if op is _UPDATE:
            changed = set(schema.row(step.model, step.data or {}))
            records = [{**(step.key or {}), **(step.data or {})}]
        else:
            records = step.records or []
            changed = {c for r in records for c in schema.row(step.model, r)} - set(key_columns)
        if changed & referenced:
            return False  # a new key, or a cascade, would reach rows the plan moved
        for i, record in enumerate(records):
            row = schema.row(step.model, record)
            if any(c not in row for c in key_columns):
                return False
            self._updates.append((number + i, step, row))
        return True

    def plan(self) -> Plan | None:
        """The plan of what was fed, or ``None`` when grouping could change its result."""
        if not self.possible:
            return None
        schema = self.schema
        created = _Created(self._tables)
        for position, step, row in self._updates:
            table = schema.table(step.model)
            assert table is not None
            key_columns = schema.key_columns(step.model)
            first = created.first(table, key_columns, tuple(row[c] for c in key_columns))
            if first is not None and first > position:
                return None  # it would find a row that, in order, does not exist yet
        tables = self._tables
        for table, creates in tables.items():
            for local, target, remote in schema.foreign.get(table, ()):
                # Only a foreign key into a table the batch creates rows in can point at
                # a later row.
                if target in tables and not _only_earlier(
                    creates.positions, creates.made, local, created.index(target, remote)
                ):
                    return None
        for position, step, row in self._updates:
            table = schema.table(step.model)
            assert table is not None
            if not _targets_exist_before(schema.foreign.get(table, []), row, position, created):
                return None
        models = self._models
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                ordered = sort_tables(models)
            except Exception:
                return None  # a cycle: only the original order is safe
        creating = self._creating
        return Plan(
            [(models[t], creating[models[t]].rows) for t in ordered],
            self._steps,
            [(models[t], creating[models[t]].chunks) for t in ordered],
        )


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
    planner = Planner(registry, without_refs=without_refs)
    for tx in transactions:
        if not planner.add(tx):
            return None
    return planner.plan()


def _only_earlier(
    positions: list[int], rows: list[dict[str, Any]], local: Columns, index: dict[Any, int]
) -> bool:
    """Whether no row's foreign key (``local``) finds in ``index`` a row created after it."""
    if len(local) == 1 and None not in index:
        # The common foreign key, looked up in C (a row without one finds -1).
        (column,) = local
        values = map(dict.get, rows, repeat(column))
        found = map(index.get, values, repeat(-1))
        return not any(map(gt, found, positions))
    if len(local) == 1:
        (column,) = local
        for position, row in zip(positions, rows, strict=True):
            value = row.get(column)
            if value is not None:
                at = index.get(value)
                if at is not None and at > position:
                    return False
        return True
    for position, row in zip(positions, rows, strict=True):
        if all(c in row and row[c] is not None for c in local):
            at = index.get(tuple(row[c] for c in local))
            if at is not None and at > position:
                return False
    return True


def _targets_exist_before(
    links: list[tuple[Columns, Table, Columns]],
    row: dict[str, Any],
    position: int,
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
