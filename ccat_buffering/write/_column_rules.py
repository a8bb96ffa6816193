"""The rules of column types: how a value is converted for a column, and read back.

One function per SQLAlchemy type family; :func:`rules_for` picks the rule of a
column type. What each does is tabled in :mod:`ccat_buffering.write.columns`.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import struct
import uuid
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import pydantic
from sqlalchemy import (
    ARRAY,
    JSON,
    REAL,
    BigInteger,
    Boolean,
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
)

from ccat_buffering.write.payload_limits import MAX_DEPTH

__all__ = ["Convert", "rules_for"]

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


def _json_data(value: Any, where: str = "", depth: int = 0) -> Any:
    if value is None or type(value) in (bool, int):
        return value
    if depth > MAX_DEPTH:
        # Refused here, before Python's own recursion limit; to_json applies the
        # payload's exact limit (payload_limits) to what is shallower.
        raise _Refused(
            f"it nests deeper than {MAX_DEPTH} levels, which the drain could not read: flatten it"
        )
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
            out[_text(key)] = _json_data(item, f"{where}.{key}" if where else key, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_data(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
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


def rules_for(column_type: Any) -> tuple[Convert, Convert, str]:
    """The write rule, the read rule and a name of what the column expects."""
    if isinstance(column_type, Enum):
        write, read = _enum(column_type)
        return write, read, "one of the enum's values"
    if isinstance(column_type, JSON):
        return _json_data, _same, "JSON data"
    if isinstance(column_type, ARRAY):
        item_write, item_read, item_name = rules_for(column_type.item_type)
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
