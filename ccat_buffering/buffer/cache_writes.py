"""What a transaction writes into the buffered data cache, and the record ids it uses.

The manager buffers these writes with the transaction; reads and
``ccat-buffering inspect`` find records by the same ids.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from ccat_buffering.buffer.checks import check_record_id
from ccat_buffering.buffer.protocols import CacheKind, CacheWrite
from ccat_buffering.write._codec import PLAIN_TYPES, encode_value
from ccat_buffering.write.models import Operation, Ref, Step, Transaction

__all__ = ["cache_writes", "generated_writes", "key_text", "record_id"]


_KEY_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
# One C-level match instead of a Python loop per character: keys (UUIDs) are
# read for every write of every transaction buffered.
_ALL_SAFE = re.compile(r"[A-Za-z0-9_.\-]*").fullmatch
# A text key that is its own id and passes check_record_id (whose characters
# and length it is within): one match for both.
_SAFE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,4096}").fullmatch
_new = object.__new__
_set = object.__setattr__
_CREATE = CacheKind.CREATE
_UPDATE = CacheKind.UPDATE
_CREATE_OP = Operation.CREATE


def key_text(value: Any) -> str:
    """One key value as text in a record id: percent-encoded outside ``[A-Za-z0-9_.-]``.

    So natural keys (``"NGC 1333"``, ``"IRAS16293-2422:A"``, ``"jdoe@example.org"``)
    stay inside the store's key schema, and a ``,`` of a composite part cannot
    be taken for the separator. UUIDs, integers and dates are unchanged.

    Args:
        value: A key value, converted to its column's type.

    Returns:
        The encoded text.
    """
    if isinstance(value, enum.Enum):
        value = value.name
    elif isinstance(value, dt.datetime | dt.date | dt.time):
        value = value.isoformat()
    elif isinstance(value, Decimal):
        # One text for one number: 1.5, 1.50 and 1.5000000000 are the same key.
        value = format(value.normalize(), "f") if value.is_finite() else str(value)
    text = value if isinstance(value, str) else str(value)
    if _ALL_SAFE(text):
        return text
    return "".join(c if c in _KEY_SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def record_id(key: Mapping[str, Any], key_fields: Sequence[str]) -> str | None:
    """The cache id of a record: its key values as text, or ``None`` if not yet known.

    Args:
        key: The record's values (at least its key fields).
        key_fields: The model's key fields.

    Returns:
        ``"<value>"`` for a single key, ``"<v1>,<v2>"`` for a composite one, each
        part encoded by :func:`key_text`; ``None`` when a key value is missing or
        only the database will produce it.

    Raises:
        TransactionValidationError: The key is empty or too long to be a cache key.
    """
    if len(key_fields) == 1:
        # The common case, a single key: no list, no join.
        value = key.get(key_fields[0])
        if value is None or isinstance(value, Ref):
            return None
        if type(value) is str and _SAFE_ID(value):
            return value
        return check_record_id(key_text(value))
    values = [key.get(name) for name in key_fields]
    if any(v is None or isinstance(v, Ref) for v in values):
        return None
    return check_record_id(",".join(key_text(v) for v in values))


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if type(v) in PLAIN_TYPES else encode_value(v, k)
        for k, v in record.items()
        if not isinstance(v, Ref)
    }


def _without_refs(encoded: dict[str, Any]) -> dict[str, Any]:
    # A step's encoded data, where a ref() is {"$ref": ...} (a user's own
    # mapping with a "$" key is wrapped in {"$map": ...}, so only a ref is).
    return {k: v for k, v in encoded.items() if type(v) is not dict or "$ref" not in v}


def _data_fields(step: Step) -> dict[str, Any]:
    """A step's ``data`` as cache fields, from the encoding its transaction's JSON made."""
    encoded = step.encoded_data
    return {} if encoded is None else _without_refs(encoded)


def _write(model: str, record_id: str, kind: CacheKind, fields: dict[str, Any]) -> CacheWrite:
    """``CacheWrite(model, record_id, kind, fields)``, for less.

    A frozen dataclass sets each field through ``object.__setattr__``; every
    buffer() makes a write per record. The values are the ones this module made.
    """
    write = _new(CacheWrite)
    _set(
        write, "__dict__", {"model": model, "record_id": record_id, "kind": kind, "fields": fields}
    )
    return write


def cache_writes(transaction: Transaction) -> list[CacheWrite]:
    """What a transaction writes, as the buffered data cache records it.

    Fields whose value is a ``ref()`` are left out: only the database knows them.

    Args:
        transaction: The transaction.

    Returns:
        One write per record, in step order.
    """
    writes: list[CacheWrite] = []
    for step in transaction.steps:
        values = step.__dict__
        op, fields, records = values["operation"], values["key_fields"], values["records"]
        if op is _CREATE_OP and not records:
            data = values["data"] or {}
            # record_id's commonest case inline: a text key that is its own id.
            rid = data.get(fields[0]) if len(fields) == 1 else None
            if type(rid) is not str or not _SAFE_ID(rid):
                rid = record_id(data, fields)
            if rid is not None:
                writes.append(_write(values["model"], rid, _CREATE, _data_fields(step)))
        elif op is _CREATE_OP or op is Operation.BULK_CREATE:
            for record in records or [values["data"] or {}]:
                rid = record_id(record, fields)
                if rid is not None:
                    writes.append(_write(values["model"], rid, _CREATE, _fields(record)))
        elif op is Operation.UPDATE or op is Operation.DELETE:
            key = values["key"] or {}
            rid = record_id(key, list(key))
            if rid is None:
                continue
            kind = _UPDATE if op is Operation.UPDATE else CacheKind.DELETE
            writes.append(_write(values["model"], rid, kind, _data_fields(step)))
        else:
            for record in records or []:
                rid = record_id(record, fields)
                if rid is not None:
                    writes.append(_write(values["model"], rid, _UPDATE, _fields(record)))
    return writes


def generated_writes(
    transaction: Transaction, generated: Mapping[str, Mapping[str, Any]]
) -> list[CacheWrite]:
    """The records of ``transaction``'s creates under the keys the database gave them.

    A create whose key only the database knows is not in the buffered data
    cache while it waits (it has no id there); once committed, its row is
    cached under the generated key, so that the site reads it by that key
    until the replica has it.

    Args:
        transaction: The committed transaction.
        generated: What the database computed, by step id then field.

    Returns:
        One write per create that now has a key, in step order.
    """
    writes: list[CacheWrite] = []
    for step in transaction.steps:
        values = generated.get(step.step_id)
        if not values or step.operation is not Operation.CREATE:
            continue
        record = {**(step.data or {}), **values}
        rid = record_id(record, step.key_fields)
        if rid is not None:
            writes.append(_write(step.model, rid, CacheKind.CREATE, _fields(record)))
    return writes
