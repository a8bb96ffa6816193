"""Argument checks every backend applies before it writes anything."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.models import TransactionStatus, check_identifier
from ccat_buffering.protocols import CacheKind, CacheWrite

__all__ = [
    "check_duration",
    "check_payload",
    "check_record_id",
    "check_status",
    "check_writes",
]


def check_duration(value: float, what: str) -> None:
    """Refuse a duration that is not a finite number of seconds >= 0.

    Raises:
        ValueError: With the offending value.
    """
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, not {value!r}")


_KNOWN_NAMES: set[str] = set()
"""Model and field names already checked: they recur in every transaction."""
_KNOWN_LIMIT = 4096


def _check_name(name: str, what: str) -> None:
    if name in _KNOWN_NAMES:
        return
    check_identifier(name, what)
    if len(_KNOWN_NAMES) < _KNOWN_LIMIT:
        _KNOWN_NAMES.add(name)


_RECORD_ID = re.compile(r"[A-Za-z0-9_.,%-]{1,4096}")


def check_record_id(record_id: str) -> str:
    """Return ``record_id`` if it can name a cache entry (see ``cache_writes.key_text``).

    Raises:
        TransactionValidationError: Empty, over 4,096 characters, or holding a
            character other than letters, digits, ``_``, ``.``, ``,``, ``%``, ``-``.
    """
    if not isinstance(record_id, str) or _RECORD_ID.fullmatch(record_id) is None:
        shown = repr(record_id) if len(str(record_id)) <= 100 else f"{str(record_id)[:80]!r}..."
        raise TransactionValidationError(
            f"record id {shown} cannot name a cache entry: it must be 1 to 4,096 of "
            "letters, digits, '_', '.', ',', '%' and '-' (cache_writes.record_id encodes keys so; "
            "a key's text takes up to 9 of them a character)"
        )
    return record_id


_TRANSACTION_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_KINDS = frozenset(CacheKind)


def check_writes(transaction_id: str, writes: Sequence[CacheWrite]) -> None:
    """Refuse cache writes that a store could not keep and give back as they were.

    The transaction id must be a plain identifier without commas (stores list
    a record's transactions); each write's model name, record id and field
    names must be plain identifiers (names that are not would escape the key
    schema, or could not be read back); its kind must be a :class:`CacheKind`.

    Raises:
        TransactionValidationError: Naming the offending value.
    """
    if not isinstance(transaction_id, str) or not _TRANSACTION_ID.fullmatch(transaction_id):
        raise TransactionValidationError(
            f"transaction id {transaction_id!r} cannot name cache entries: use letters, "
            "digits, '_', '.' and '-' (a UUID does)"
        )
    for write in writes:
        _check_name(write.model, "model name")
        check_record_id(write.record_id)
        if write.kind not in _KINDS:
            raise TransactionValidationError(
                f"cache write kind {write.kind!r} is not one of {', '.join(_KINDS)}"
            )
        for name in write.fields:
            _check_name(name, "field name")


def check_payload(payload: object) -> None:
    """Refuse a buffer entry that is not text.

    Raises:
        TypeError: Naming the type given.
    """
    if not isinstance(payload, str):
        raise TypeError(f"payload must be text, not {type(payload).__name__}")


def check_status(status: object) -> None:
    """Refuse a status that is not a :class:`TransactionStatus`.

    Raises:
        TypeError: Naming the type given.
    """
    if not isinstance(status, TransactionStatus):
        raise TypeError(f"status must be a TransactionStatus, not {type(status).__name__}")
