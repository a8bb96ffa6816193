"""Lossless JSON for payload values.

Plain JSON would turn a ``datetime``, ``UUID`` or ``Decimal`` into a string and
never give it back. Values of those types are written as one-key objects whose
key starts with ``$`` (``{"$decimal": "1.50"}``); a user's own mapping that
happens to have such a key is wrapped in ``{"$map": {...}}`` so that it cannot
be mistaken for one.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["PLAIN_TYPES", "SUPPORTED_TYPES", "decode_value", "encode_value"]

SUPPORTED_TYPES = (
    "None, bool, int, float, str, datetime, date, time, timedelta, UUID, Decimal, "
    "bytes, enum members (as their name), list, dict with str keys"
)


PLAIN_TYPES = frozenset({str, int, bool, type(None)})
"""Types that :func:`encode_value` returns as they are (not their subclasses)."""


def _encode_mapping(value: Mapping[Any, Any], path: str) -> dict[str, Any]:
    encoded: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{path}: mapping key {key!r} is not a string")
        encoded[key] = encode_value(item, f"{path}.{key}")
    if any(key.startswith("$") for key in encoded):
        return {"$map": encoded}
    return encoded


def encode_value(value: Any, path: str = "value") -> Any:
    """Return ``value`` as plain JSON data that :func:`decode_value` restores.

    Args:
        value: A payload value.
        path: Where the value sits, for the error message.

    Returns:
        JSON-compatible data.

    Raises:
        TypeError: The value (or one inside it) is of a type that cannot be
            stored; the message names where it sits.
    """
    if type(value) in PLAIN_TYPES or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {"$float": repr(value)}
        return value
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$time": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, enum.Enum):
        # Its name, as SQLAlchemy's Enum persists it by default and the column
        # rules read it back (a StrEnum or IntEnum member is text or a number above).
        return value.name
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return _encode_mapping(value, path)
    if isinstance(value, list | tuple):
        return [encode_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"{path}: a value of type {type(value).__name__} cannot be buffered; "
        f"use one of: {SUPPORTED_TYPES}"
    )


_DECODERS: dict[str, Any] = {
    "$datetime": dt.datetime.fromisoformat,
    "$date": dt.date.fromisoformat,
    "$time": dt.time.fromisoformat,
    "$timedelta": lambda parts: dt.timedelta(
        days=parts[0], seconds=parts[1], microseconds=parts[2]
    ),
    "$uuid": uuid.UUID,
    "$decimal": Decimal,
    "$bytes": lambda text: base64.b64decode(text.encode("ascii")),
    "$float": float,
}


def decode_value(data: Any) -> Any:
    """Restore a value written by :func:`encode_value`.

    Args:
        data: JSON data.

    Returns:
        The original value.
    """
    if isinstance(data, list):
        return [decode_value(item) for item in data]
    if isinstance(data, dict):
        if len(data) == 1:
            ((key, inner),) = data.items()
            if key == "$map":
                return {k: decode_value(v) for k, v in inner.items()}
            decoder = _DECODERS.get(key)
            if decoder is not None:
                return decoder(inner)
        return {k: decode_value(v) for k, v in data.items()}
    return data
