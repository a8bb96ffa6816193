"""What a value means for its column: conversion to the mapped column's Python type.

A buffered write must mean what the direct write means. So when a transaction
is built, every value is converted here to the Python type of the column it
is written to (pydantic, lax mode: the text forms a JSON request carries become
``UUID``, ``datetime``, ``Decimal``, ...), and whatever the main database would
refuse for its type is refused now, before anything is stored. Python-side
column defaults run here too, at write time.

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
import functools
import math
import struct
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import pydantic
from sqlalchemy import (
    ARRAY,
    JSON,
    REAL,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    Interval,
    LargeBinary,
    Numeric,
    SmallInteger,
    String,
    Time,
    TypeDecorator,
    Uuid,
    inspect,
)
from sqlalchemy.orm import Mapper

from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.models import Operation, Ref, Step

__all__ = ["ColumnRule", "ModelColumns", "columns_of", "convert_step", "is_converted"]

_INT_RANGES: list[tuple[type[Any], int]] = [(SmallInteger, 16), (BigInteger, 64), (Integer, 32)]


class _Refused(ValueError):
    """A value that its column cannot take; the message says what it expects."""


_ADAPTERS: dict[type[Any], pydantic.TypeAdapter[Any]] = {}


def _lax(python_type: type[Any], value: Any) -> Any:
    if type(value) is python_type:
        return value
    adapter = _ADAPTERS.get(python_type)
    if adapter is None:
        adapter = _ADAPTERS[python_type] = pydantic.TypeAdapter(python_type)
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError as exc:
        message = exc.errors(include_url=False)[0]["msg"]
        raise _Refused(f"{message.lower()}") from None


Convert = Callable[[Any], Any]


def _integer(bits: int) -> Convert:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def convert(value: Any) -> Any:
        number = _lax(int, value)
        if not low <= number <= high:
            raise _Refused(f"out of range for a {bits}-bit integer ({low} to {high})")
        return number

    return convert


def _numeric(column_type: Numeric[Any]) -> Convert:
    precision, scale = column_type.precision, column_type.scale
    quantum = Decimal(1).scaleb(-scale) if scale is not None else None

    def convert(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise _Refused("not a finite number")
        number = _lax(Decimal, value)
        if not number.is_finite():
            raise _Refused("not a finite number")
        if quantum is not None:
            try:
                number = number.quantize(quantum, rounding=ROUND_HALF_UP)
            except InvalidOperation:
                raise _Refused(f"too large for NUMERIC({precision}, {scale})") from None
        if precision is not None:
            sign_digits = number.as_tuple()
            integral = len(sign_digits.digits) + int(sign_digits.exponent)
            if number != 0 and integral > precision - (scale or 0):
                raise _Refused(f"too large for NUMERIC({precision}, {scale or 0})")
        return number

    return convert


def _text(text: str) -> str:
    """Refuse what no PostgreSQL text can hold: NUL, and lone surrogates (not UTF-8)."""
    if "\x00" in text:
        raise _Refused("it holds a NUL character, which PostgreSQL text cannot hold")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise _Refused("it holds a lone surrogate, which is not UTF-8") from None
    return text


def _string(length: int | None) -> Convert:
    def convert(value: Any) -> Any:
        text = _text(_lax(str, value))
        if length is not None and len(text) > length:
            raise _Refused(f"{len(text)} characters, longer than the column's {length}")
        return text

    return convert


def _float(single: bool) -> Convert:
    def convert(value: Any) -> Any:
        number = _lax(float, value)
        if not math.isfinite(number):
            # SQLite stores NaN as NULL: refused on every database alike.
            raise _Refused("not a finite number")
        # A REAL column keeps single precision: buffer what it will hold.
        return _single(number) if single else number

    return convert


def _single(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return struct.unpack("f", struct.pack("f", value))[0]
    return value


def _date(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise _Refused("a number is not a date: give '2026-12-01' or a date")
    return _lax(dt.date, value)


def _duration(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("P"):
        days, _, _ = value.partition("T")
        if "Y" in days or "M" in days:
            raise _Refused("years and months have no fixed length: give days, hours, ...")
    return _lax(dt.timedelta, value)


def _datetime(aware: bool) -> Convert:
    def convert(value: Any) -> Any:
        moment = _lax(dt.datetime, value)
        if aware:
            if moment.tzinfo is None:
                raise _Refused(
                    "a naive datetime for a timezone-aware column: give its offset "
                    "(for example '2026-12-01T10:00:00Z')"
                )
            return moment.astimezone(dt.UTC)
        if moment.tzinfo is not None:
            raise _Refused(
                "an aware datetime for a column without time zone: give a naive "
                "datetime, or declare the column DateTime(timezone=True)"
            )
        return moment

    return convert


def _read_datetime(aware: bool) -> Convert:
    def read(value: Any) -> Any:
        if isinstance(value, dt.datetime) and aware:
            # SQLite keeps no offset: what was stored there is UTC.
            return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
        return value

    return read


def _time(aware: bool) -> Convert:
    def convert(value: Any) -> Any:
        moment = _lax(dt.time, value)
        if not aware and moment.tzinfo is not None:
            raise _Refused("an aware time for a column without time zone")
        return moment

    return convert


def _uuid(as_uuid: bool) -> Convert:
    def convert(value: Any) -> Any:
        if isinstance(value, uuid.UUID):
            key = value
        elif isinstance(value, str):
            try:
                key = uuid.UUID(value)
            except ValueError:
                raise _Refused("not a UUID") from None
        else:
            raise _Refused("not a UUID")
        return key if as_uuid else str(key)

    return convert


def _read_uuid(value: Any) -> Any:
    # asyncpg gives its own subclass; a record shows the same type from either side.
    if isinstance(value, uuid.UUID) and type(value) is not uuid.UUID:
        return uuid.UUID(int=value.int)
    return value


def _json_data(value: Any, where: str = "") -> Any:
    if value is None or type(value) in (bool, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(f"{where or 'the value'} is {value!r}, which JSON cannot hold")
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bool | int):
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Refused(f"mapping key {key!r} is not text, which JSON needs")
            out[_text(key)] = _json_data(item, f"{where}.{key}" if where else key)
        return out
    if isinstance(value, list | tuple):
        return [_json_data(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise _Refused(
        f"{where or 'the value'} is a {type(value).__name__}, which JSON cannot hold: "
        "convert it to text or a number first"
    )


def _enum(column_type: Enum) -> tuple[Convert, Convert]:
    by_persisted: dict[Any, Any] = {
        k: v for k, v in column_type._object_lookup.items() if k is not None
    }
    enum_class = column_type.enum_class
    persisted_of = {member: name for name, member in by_persisted.items()}
    accepted = ", ".join(repr(name) for name in by_persisted)

    def write(value: Any) -> Any:
        if enum_class is not None and isinstance(value, enum_class):
            return persisted_of[value]
        if isinstance(value, str) and value in by_persisted:
            return value
        if enum_class is not None:
            try:
                return persisted_of[enum_class(value)]
            except (ValueError, KeyError):
                pass
            if isinstance(value, str) and value in enum_class.__members__:
                return persisted_of[enum_class.__members__[value]]
        raise _Refused(f"not one of {accepted}")

    def read(value: Any) -> Any:
        if isinstance(value, str) and value in by_persisted:
            return by_persisted[value]
        return value

    return write, read


def _same(value: Any) -> Any:
    return value


def _rules_for(column_type: Any) -> tuple[Convert, Convert, str]:
    """The write rule, the read rule and a name of what the column expects."""
    if isinstance(column_type, Enum):
        write, read = _enum(column_type)
        return write, read, "one of the enum's values"
    if isinstance(column_type, JSON):
        return _json_data, _same, "JSON data"
    if isinstance(column_type, ARRAY):
        item_write, item_read, item_name = _rules_for(column_type.item_type)
        if (column_type.dimensions or 1) > 1:
            return _same, _same, "an array"

        def write_list(value: Any) -> Any:
            if not isinstance(value, list | tuple):
                raise _Refused("not a list")
            return [None if item is None else item_write(item) for item in value]

        def read_list(value: Any) -> Any:
            if not isinstance(value, list):
                return value
            return [None if item is None else item_read(item) for item in value]

        return write_list, read_list, f"a list of {item_name}"
    if isinstance(column_type, Uuid):
        as_uuid = bool(column_type.as_uuid)
        return _uuid(as_uuid), _read_uuid, "a UUID"
    if isinstance(column_type, DateTime):
        aware = bool(column_type.timezone)
        kind = "an aware datetime" if aware else "a naive datetime"
        return _datetime(aware), _read_datetime(aware), kind
    if isinstance(column_type, Time):
        return _time(bool(column_type.timezone)), _same, "a time"
    if isinstance(column_type, Date):
        return _date, _same, "a date"
    if isinstance(column_type, Interval):
        return _duration, _same, "a duration"
    if isinstance(column_type, Float):
        precision = column_type.precision
        single = isinstance(column_type, REAL) or (precision is not None and precision <= 24)
        # Drivers read single precision back differently (asyncpg as the double
        # nearest, psycopg as the shortest text): records show the double nearest.
        return _float(single), (_single if single else _same), "a finite number"
    if isinstance(column_type, Numeric):
        if not column_type.asdecimal:
            return functools.partial(_lax, float), _same, "a number"
        return _numeric(column_type), _same, "a decimal number"
    if isinstance(column_type, Boolean):
        return functools.partial(_lax, bool), _same, "a boolean"
    for integer_type, bits in _INT_RANGES:
        if isinstance(column_type, integer_type):
            return _integer(bits), _same, "an integer"
    if isinstance(column_type, String):
        return _string(column_type.length), _same, "text"
    if isinstance(column_type, LargeBinary):
        return functools.partial(_lax, bytes), _same, "bytes"
    if isinstance(column_type, TypeDecorator):
        return _same, _same, type(column_type).__name__  # its own Python side: unknown here
    try:
        python_type = column_type.python_type
    except NotImplementedError:
        return _same, _same, type(column_type).__name__
    return functools.partial(_lax, python_type), _same, python_type.__name__


def _shown(value: Any, limit: int = 120) -> str:
    text = repr(value)
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
            write, read, expects = _rules_for(column.type)
            self.rules[attribute.key] = ColumnRule(attribute.key, column, expects, write, read)
        self.key_fields = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
        # Single-table inheritance: the class's discriminator is written with its rows.
        self.identity: tuple[str, Any] | None = None
        on = mapper.polymorphic_on
        if isinstance(on, Column) and mapper.polymorphic_identity is not None:
            self.identity = (mapper.get_property_by_column(on).key, mapper.polymorphic_identity)
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
            name for name, rule in self.rules.items() if self._is_required(rule.column)
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

    def fill_defaults(self, record: dict[str, Any], which: str, where: str) -> None:
        """Add the Python-side ``default``/``onupdate`` of every column ``record`` lacks."""
        for rule in self._defaulted[which]:
            if rule.field in record:
                continue
            _, value = rule.python_default(which, record)
            record[rule.field] = self.convert({rule.field: value}, where)[rule.field]

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
    if step.records is not None:
        changes["records"] = [
            _record(columns, record, which, creating, f"{where} record {i}")
            for i, record in enumerate(step.records)
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
