"""What a value means for its column: conversion to the mapped column's Python type.

A buffered write must mean what the direct write means. So when a transaction
is built, every value is converted here to the Python type of the column it
is written to (pydantic, lax mode: the text forms a JSON request carries become
``UUID``, ``datetime``, ``Decimal``, ...), and whatever the main database would
refuse for its type is refused now, before anything is stored. Python-side
column defaults run here too, at write time, and so does a server-side
current-time default (``now()``, ``CURRENT_TIMESTAMP``) of a create, unless its
column opts out (:func:`takes_write_time`).

The same rules read values back (:meth:`ColumnRule.read`), so that a record
shows the same values and types from the buffer as from the database.

Rules by SQLAlchemy type (the first that matches):

==================  =====================================================================
``Enum``            a member, a persisted name, or a member's value; stored as the
                    persisted string, read back as the member (or the string)
``JSON``/``JSONB``  JSON data only: dict with text keys, list, text, finite numbers,
                    bools, ``None``
``ARRAY``           a list, each item by the item type's rule
``Uuid``            ``uuid.UUID`` from its text forms (text when ``as_uuid=False``)
``DateTime``        ISO 8601 text or a datetime; aware values for ``timezone=True``
                    columns (stored in UTC), naive for the others
``Time``            ISO 8601 text or a time
``Float``           ``float`` from numbers and numeric text
``Numeric``         ``Decimal`` from text, int or float, rounded to the column's scale,
                    refused past its precision
``Integer`` & co.   ``int`` from integral numbers and text, within the column's range
``Boolean``         ``bool`` from ``true``/``false``, ``1``/``0``, ...
``String`` & co.    text no longer than the column's length
other types         their ``python_type`` through pydantic; types without one, and
                    ``TypeDecorator`` types, unchanged
==================  =====================================================================
"""

from __future__ import annotations

import datetime as dt
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Date, DateTime, Enum, String, TextClause, Uuid, inspect
from sqlalchemy.orm import Mapper
from sqlalchemy.sql.functions import FunctionElement

from ccat_buffering._column_rules import Convert, rules_for
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.models import Operation, Ref, Step, utc_now

__all__ = [
    "WRITE_TIME_INFO",
    "ColumnRule",
    "ModelColumns",
    "columns_of",
    "convert_step",
    "is_converted",
    "takes_write_time",
]


def _shown(value: Any, limit: int = 120) -> str:
    try:
        text = repr(value)
    except RecursionError:  # a value nested too deep for repr: say what it is
        return f"a {type(value).__name__} nested too deep to show"
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


class _DefaultContext:
    """What a context-sensitive column default sees: the row being written."""

    def __init__(self, parameters: Mapping[str, Any]) -> None:
        self.current_parameters = dict(parameters)

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:
        return self.current_parameters


@dataclass(frozen=True)
class ColumnRule:
    """How one mapped column takes values.

    Attributes:
        field: The attribute name steps use.
        column: The column.
        expects: What the column expects, in words, for messages.
    """

    field: str
    column: Column[Any]
    expects: str
    _write: Convert
    _read: Convert

    def write(self, value: Any) -> Any:
        """The value as it is buffered, cached and applied.

        Raises:
            ValueError: The column cannot take it; the message says why.
        """
        if value is None or isinstance(value, Ref):
            return value
        return self._write(value)

    def read(self, value: Any) -> Any:
        """A buffered or database value as a record shows it."""
        return None if value is None else self._read(value)

    def python_default(self, which: str, row: Mapping[str, Any]) -> tuple[bool, Any]:
        """Run the column's Python-side ``default`` or ``onupdate``.

        Args:
            which: ``"default"`` or ``"onupdate"``.
            row: The values of the row being written, for context-sensitive defaults.

        Returns:
            Whether there is such a default, and its value.
        """
        default = getattr(self.column, which)
        if default is None or not (default.is_scalar or default.is_callable):
            return False, None
        if default.is_scalar:
            return True, default.arg
        return True, default.arg(_DefaultContext(row))


class ModelColumns:
    """The rules of every mapped column of one class.

    Args:
        mapper: The class's mapper.
    """

    def __init__(self, mapper: Mapper[Any]) -> None:
        self.name = mapper.class_.__name__
        self.rules: dict[str, ColumnRule] = {}
        for attribute in mapper.column_attrs:
            column = attribute.columns[0]
            if not isinstance(column, Column):
                continue
            write, read, expects = rules_for(column.type)
            self.rules[attribute.key] = ColumnRule(attribute.key, column, expects, write, read)
        self.key_fields = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
        # Single-table inheritance: the class's discriminator is written with its rows.
        self.identity: tuple[str, Any] | None = None
        on = mapper.polymorphic_on
        if isinstance(on, Column) and mapper.polymorphic_identity is not None:
            self.identity = (mapper.get_property_by_column(on).key, mapper.polymorphic_identity)
        # SQLAlchemy's version_id_col: creates set the first version, updates
        # check the one they saw and set the next, as the ORM does.
        self.version: str | None = None
        self._next_version: Any = None
        version_column = mapper.version_id_col
        if isinstance(version_column, Column) and mapper.version_id_generator is not False:
            self.version = mapper.get_property_by_column(version_column).key
            self._next_version = mapper.version_id_generator
        table = mapper.local_table
        self._autoincrement = getattr(table, "autoincrement_column", None)
        # Worked out once per class: every step of the model needs them.
        self._defaulted = {
            which: [
                rule
                for rule in self.rules.values()
                if (d := getattr(rule.column, which)) is not None and (d.is_scalar or d.is_callable)
            ]
            for which in ("default", "onupdate")
        }
        self._required = [
            name
            for name, rule in self.rules.items()
            if self._is_required(rule.column) and name != self.version
        ]
        self._write_time = [rule for rule in self.rules.values() if takes_write_time(rule.column)]
        self._generated = [
            rule
            for rule in self.rules.values()
            if rule.column is self._autoincrement
            or rule.column.identity is not None
            or rule.column.computed is not None
            or rule.column.server_default is not None
        ]
        self._not_null = frozenset(
            name
            for name, rule in self.rules.items()
            if not rule.column.nullable and rule.column is not self._autoincrement
        )

    def _is_required(self, column: Column[Any]) -> bool:
        if column.nullable or column is self._autoincrement:
            return False
        if column.default is not None or column.server_default is not None:
            return False
        return column.computed is None and column.identity is None

    def convert(self, record: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Each value of ``record`` converted by its column's rule.

        Raises:
            TransactionValidationError: Naming ``where``, the field, the value and
                what the column expects.
        """
        out: dict[str, Any] = {}
        for name, value in record.items():
            rule = self.rules.get(name)
            if rule is None:
                out[name] = value  # the registry names unknown fields
                continue
            try:
                out[name] = rule.write(value)
            except (ValueError, ArithmeticError) as exc:
                raise TransactionValidationError(
                    f"{where}: {self.name}.{name} = {_shown(value)} is refused: {exc} "
                    f"(the column expects {rule.expects})"
                ) from None
        return out

    def read(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A record's values as the reads show them (enum members, aware times)."""
        rules = self.rules
        return {
            name: rules[name].read(value) if name in rules else value
            for name, value in record.items()
        }

    def next_version(self, current: Any) -> Any:
        """The version a write sets over ``current`` (``None`` for a create).

        Raises:
            TypeError: The model has no ``version_id_col`` the library can bump.
        """
        if self.version is None:
            raise TypeError(f"{self.name} has no version_id_col")
        return self._next_version(current)

    def fill_defaults(self, record: dict[str, Any], which: str, where: str) -> None:
        """Add the Python-side ``default``/``onupdate`` of every column ``record`` lacks."""
        for rule in self._defaulted[which]:
            if rule.field in record:
                continue
            _, value = rule.python_default(which, record)
            record[rule.field] = self.convert({rule.field: value}, where)[rule.field]

    def fill_write_time(self, record: dict[str, Any], now: dt.datetime) -> None:
        """Give every current-time server default ``record`` lacks the write time."""
        for rule in self._write_time:
            if rule.field not in record:
                record[rule.field] = rule.write(now)

    def generated_fields(self, record: Mapping[str, Any]) -> tuple[str, ...]:
        """The fields of a created ``record`` that the database computes.

        An autoincrement or identity key, a computed column, or a column with
        a server default, that ``record`` does not give.
        """
        return tuple(rule.field for rule in self._generated if rule.field not in record)

    def generated_key(self, where: str) -> tuple[bool, Any]:
        """A key for a create that gives none: whether one is made, and the key.

        A key column with a Python default uses it; a ``Uuid`` or long enough
        text key gets a new UUID of the column's type; an autoincrement key is
        left to the database.

        Raises:
            TransactionValidationError: A text key too short for a UUID, with no default.
        """
        if len(self.key_fields) != 1:
            return False, None
        rule = self.rules[self.key_fields[0]]
        present, value = rule.python_default("default", {})
        if present:
            return True, rule.write(value)
        column_type = rule.column.type
        if isinstance(column_type, Uuid):
            return True, rule.write(uuid.uuid4())
        if isinstance(column_type, String) and not isinstance(column_type, Enum):
            if column_type.length is not None and column_type.length < 36:
                raise TransactionValidationError(
                    f"{where}: {self.name}.{rule.field} is {column_type!r}, too short for "
                    "a generated UUID key: give the key, or give the column a default="
                )
            return True, str(uuid.uuid4())
        return False, None

    def missing_required(self, record: Mapping[str, Any]) -> list[str]:
        """Columns a create must give: NOT NULL, with no default of any kind."""
        return [name for name in self._required if name not in record]

    def null_refused(self, record: Mapping[str, Any]) -> list[str]:
        """Fields given as ``None`` whose columns are NOT NULL."""
        not_null = self._not_null
        return [name for name, value in record.items() if value is None and name in not_null]


_NOW_DEFAULTS = frozenset(
    {
        "now()",
        "current_timestamp",
        "current_timestamp()",
        "localtimestamp",
        "localtimestamp()",
        "transaction_timestamp()",
        "statement_timestamp()",
        "clock_timestamp()",
        "datetime('now')",
        "(datetime('now'))",
        "(current_timestamp)",
    }
)
WRITE_TIME_INFO = "ccat_buffering_write_time"
"""``Column.info`` key: ``False`` keeps the database's own time for a current-time default."""


def takes_write_time(column: Column[Any]) -> bool:
    """Whether a buffered create gives ``column`` the write time (see ``WRITE_TIME_INFO``).

    So does a column with a server-side current-time default (``now()``,
    ``CURRENT_TIMESTAMP`` and their kin) that does not opt out with
    ``info={"ccat_buffering_write_time": False}``: a create buffered through
    an outage records when it was written, not when the drain applied it.
    """
    default = column.server_default
    if default is None or column.info.get(WRITE_TIME_INFO) is False:
        return False
    if not isinstance(column.type, DateTime | Date):
        return False
    arg = getattr(default, "arg", None)
    if isinstance(arg, FunctionElement):
        text = (
            f"{arg.name}()" if arg.name not in ("current_timestamp", "localtimestamp") else arg.name
        )
    elif isinstance(arg, TextClause):
        text = arg.text
    else:
        return False
    return "".join(text.split()).lower() in _NOW_DEFAULTS


_COLUMNS: weakref.WeakKeyDictionary[type[Any], ModelColumns] = weakref.WeakKeyDictionary()


def columns_of(model: type[Any]) -> ModelColumns:
    """The column rules of a mapped class (computed once per class).

    Raises:
        sqlalchemy.exc.NoInspectionAvailable: ``model`` is not mapped.
    """
    columns = _COLUMNS.get(model)
    if columns is None:
        columns = _COLUMNS[model] = ModelColumns(inspect(model))
    return columns


_CONVERTED: weakref.WeakValueDictionary[int, Step] = weakref.WeakValueDictionary()
"""Steps made by :func:`convert_step` (by id, while they live): not converted again.

Kept outside the model, so that a converted step still equals the same step read
back from the buffer."""


def is_converted(step: Step) -> bool:
    """Whether ``step`` came out of :func:`convert_step` (in this process)."""
    return _CONVERTED.get(id(step)) is step


def convert_step(step: Step, columns: ModelColumns, where: str) -> Step:
    """A step with every value converted by its column, and Python defaults filled in.

    A create (or each bulk-created record) gets the columns' ``default=``, an
    update (or each bulk-updated record) their ``onupdate=``, for the columns it
    does not give: they run now, at write time, not when the drain applies it.

    Args:
        step: A step of ``columns``'s model.
        columns: The model's rules.
        where: Where the step sits, for messages.

    Returns:
        The converted step (``step`` itself if nothing changed).

    Raises:
        TransactionValidationError: A value its column cannot take, ``None``
            for a NOT NULL column, or a create missing a required column.
    """
    if is_converted(step):
        return step
    creating = step.operation in (Operation.CREATE, Operation.BULK_CREATE)
    which = "default" if creating else "onupdate"
    changes: dict[str, Any] = {}
    if step.key is not None:
        changes["key"] = columns.convert(step.key, where)
    if step.data is not None:
        changes["data"] = _record(columns, step.data, which, creating, where)
        if columns.version is not None:
            if creating:
                changes["data"].setdefault(columns.version, columns.next_version(None))
            elif step.expected_version is not None:
                changes["data"].setdefault(
                    columns.version, columns.next_version(step.expected_version)
                )
    if step.expected is not None:
        changes["expected"] = columns.convert(step.expected, f"{where} expected")
    if step.records is not None:
        changes["records"] = [
            _record(columns, record, which, creating, f"{where} record {i}")
            for i, record in enumerate(step.records)
        ]
        if columns.version is not None and creating:
            for record in changes["records"]:
                record.setdefault(columns.version, columns.next_version(None))
        if columns.version is not None and step.expected_versions is not None:
            for record, seen in zip(changes["records"], step.expected_versions, strict=True):
                if seen is not None:
                    record.setdefault(columns.version, columns.next_version(seen))
    if step.expected_records is not None:
        changes["expected_records"] = [
            columns.convert(base, f"{where} record {i} expected")
            for i, base in enumerate(step.expected_records)
        ]
    converted = step.model_copy(update=changes)
    _CONVERTED[id(converted)] = converted
    return converted


def _record(
    columns: ModelColumns, record: Mapping[str, Any], which: str, creating: bool, where: str
) -> dict[str, Any]:
    values = columns.convert(record, where)
    if creating and columns.identity is not None:
        values.setdefault(*columns.identity)
    columns.fill_defaults(values, which, where)
    if creating:
        columns.fill_write_time(values, utc_now())
    refused = columns.null_refused(values)
    if refused:
        raise TransactionValidationError(
            f"{where}: {columns.name}.{refused[0]} = None is refused: the column is NOT NULL"
        )
    if creating:
        missing = columns.missing_required(values)
        if missing:
            raise TransactionValidationError(
                f"{where}: {columns.name} needs {', '.join(repr(m) for m in missing)} "
                "(NOT NULL, with no default)"
            )
    return values
