"""A claimed entry read back once, without validating it again.

Every entry in the buffer was validated by pydantic when it was submitted, and
the drain reads thousands a second: validating each again cost about a fifth
of the drain's CPU (issue #23). :func:`decode_entry` parses the JSON once,
checks its integrity (the shape, the identifiers, the format version, the
fields each operation takes: what a foreign or damaged entry would get
wrong) and builds the models without their validators. Anything it does not
expect, it hands to :meth:`Transaction.from_json`, which refuses a bad entry
with the same message as before or reads an unusual good one (a ``ref()``, a
missing ``created_at``); so an entry is accepted by the fast path only where
the full validation would accept it too.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic_core import from_json

from ccat_buffering.write._codec import decode_value
from ccat_buffering.write.identifiers import _KNOWN_IDENTIFIERS as _KNOWN
from ccat_buffering.write.identifiers import known_identifier
from ccat_buffering.write.models import FORMAT_VERSION, Operation, Step, Transaction
from ccat_buffering.write.status import constructed

__all__ = ["decode_entry"]

_TX_FIELDS = frozenset(Transaction.model_fields)
_STEP_FIELDS = frozenset(Step.model_fields)
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_OPERATIONS = {op.value: op for op in Operation}
_NEEDS = {
    Operation.CREATE: (True, False, False),
    Operation.UPDATE: (True, True, False),
    Operation.DELETE: (False, True, False),
    Operation.BULK_CREATE: (False, False, True),
    Operation.BULK_UPDATE: (False, False, True),
}
_UTC = dt.UTC
# The members as module names: reading one off its class costs about 100 ns
# on Python 3.11 (the enum class's __getattr__), a name a few.
_UPDATE = Operation.UPDATE
_DELETE = Operation.DELETE
_BULK_UPDATE = Operation.BULK_UPDATE
_DEFAULT_KEY = ("id",)
_DEFAULT_KEY_LIST = ["id"]
_BASE_FIELDS = frozenset(("expected", "expected_version", "expected_records", "expected_versions"))


def _parse(payload: str) -> Any:
    # pydantic's own JSON parser (the one Transaction.from_json reads with): a
    # third of the json module's instructions, with the keys' text shared
    # between entries. Only the keys: caching every short value too (the
    # default) costs a lookup per value for values that mostly never repeat
    # (ids, paths, times), ~8 % of the decode. NaN or Infinity (never written
    # by to_json) raise here: the full validation decides.
    return from_json(payload, allow_inf_nan=False, cache_strings="keys")


class _Unusual(Exception):
    """Not the common shape: the full validation decides."""


def _identifier(value: Any) -> str:
    if type(value) is not str:
        raise _Unusual
    if value in _KNOWN:
        return value
    try:
        return known_identifier(value)
    except ValueError:
        raise _Unusual from None


def _record(value: Any) -> dict[str, Any]:
    """``value`` (the parsed JSON, reused) with its tagged values decoded."""
    if type(value) is not dict:
        raise _Unusual
    if not _KNOWN.issuperset(value):  # names seen before: the common case, in C
        for name in value:
            _identifier(name)
    for item in value.values():
        if type(item) is dict or type(item) is list:
            break
    else:
        return value  # plain values only: the common record
    tagged = [name for name, item in value.items() if type(item) is dict or type(item) is list]
    for name in tagged:
        item = value[name]
        if type(item) is dict and "$ref" in item:
            raise _Unusual  # a ref(): rare, and the full validation checks its target
        value[name] = decode_value(item)
    return value


def _step(raw: Any) -> Step:
    if type(raw) is not dict or not raw.keys() <= _STEP_FIELDS:
        raise _Unusual
    get = raw.get
    operation = _OPERATIONS.get(get("operation"))  # type: ignore[arg-type]
    if operation is None:
        raise _Unusual
    data = get("data")
    key = get("key")
    records = get("records")
    if _NEEDS[operation] != (data is not None, key is not None, records is not None):
        raise _Unusual
    if data is not None:
        data = _record(data)
    if key is not None:
        key = _record(key)
        if not key:
            raise _Unusual
    if records is not None:
        if type(records) is not list or not records:
            raise _Unusual
        for record in records:  # decoded in place: the parsed list is the step's own
            _record(record)
    key_fields = get("key_fields", _DEFAULT_KEY)
    if key_fields == _DEFAULT_KEY_LIST:  # as to_json writes the default (a list)
        key_fields = _DEFAULT_KEY
    elif key_fields is not _DEFAULT_KEY:
        if type(key_fields) is list:
            key_fields = tuple(key_fields)
        elif type(key_fields) is not tuple:
            raise _Unusual
        if not _KNOWN.issuperset(key_fields):
            for name in key_fields:
                _identifier(name)
    expected = version = None
    if not _BASE_FIELDS.isdisjoint(raw):  # a step with a base: rare
        expected = get("expected")
        version = get("expected_version")
        if expected is not None or version is not None:
            if operation is not _UPDATE and operation is not _DELETE:
                raise _Unusual
            if expected is not None:
                expected = _record(expected)
            if version is not None and type(version) is not int:
                raise _Unusual
        if get("expected_records") is not None or get("expected_versions") is not None:
            raise _Unusual  # a bulk update's bases per row: the full validation checks their shape
    if operation is _BULK_UPDATE and any(f not in r for r in records or () for f in key_fields):
        raise _Unusual
    step_id = get("step_id")
    if type(step_id) is not str or step_id not in _KNOWN:
        step_id = _identifier(step_id)
    model = get("model")
    if type(model) is not str or model not in _KNOWN:
        model = _identifier(model)
    values = {
        "step_id": step_id,
        "operation": operation,
        "model": model,
        "data": data,
        "key": key,
        "records": records,
        "key_fields": key_fields,
        "expected": expected,
        "expected_version": version,
        "expected_records": None,
        "expected_versions": None,
        # Step._refs (a cached property) found already: a ref() is _Unusual here.
        "_refs": (),
    }
    return constructed(Step, values, set(raw))


def _lean(payload: str) -> Transaction:
    raw = _parse(payload)
    if type(raw) is not dict or not raw.keys() <= _TX_FIELDS:
        raise _Unusual
    version = raw.get("format_version", 1)
    transaction_id = raw.get("transaction_id")
    created = raw.get("created_at")
    steps_raw = raw.get("steps")
    trace = raw.get("trace_context")
    if (
        type(version) is not int
        or not 1 <= version <= FORMAT_VERSION
        or type(transaction_id) is not str
        or not _CANONICAL_UUID.match(transaction_id)
        or type(created) is not str
        or type(steps_raw) is not list
        or not steps_raw
    ):
        raise _Unusual
    if trace is not None and (
        type(trace) is not dict
        or not all(type(k) is str and type(v) is str for k, v in trace.items())
    ):
        raise _Unusual
    try:
        created_at = dt.datetime.fromisoformat(created)
    except ValueError:
        raise _Unusual from None
    if created_at.tzinfo is None:
        raise _Unusual
    if created_at.tzinfo is not _UTC:
        created_at = created_at.astimezone(_UTC)
    steps = [_step(s) for s in steps_raw]
    # One plain loop over the steps (no comprehension nor generator to set up):
    # their ids, and Step.has_base read off the values (a lean step has no
    # per-record bases).
    ids = set()
    based = False
    for step in steps:
        fields = step.__dict__
        ids.add(fields["step_id"])
        if fields["expected"] is not None or fields["expected_version"] is not None:
            based = True
    if len(ids) != len(steps):
        raise _Unusual
    if based:
        version = max(version, 2)
    endpoint = raw.get("endpoint")
    if type(endpoint) is not str or endpoint not in _KNOWN:
        endpoint = _identifier(endpoint)
    values = {
        "format_version": version,
        "transaction_id": transaction_id,
        "endpoint": endpoint,
        "steps": steps,
        "created_at": created_at,
        "trace_context": trace,
    }
    return constructed(Transaction, values, set(raw))


def decode_entry(payload: str) -> Transaction:
    """The transaction a claimed entry holds.

    Args:
        payload: The entry's text, as :meth:`Transaction.to_json` wrote it.

    Returns:
        The transaction, equal to what :meth:`Transaction.from_json` reads.

    Raises:
        TransactionValidationError: The entry is not a valid transaction.
    """
    try:
        return _lean(payload)
    except Exception:
        # Anything unexpected (a damaged entry, a value decode_value refuses):
        # the full validation reads it or says exactly what is wrong.
        return Transaction.from_json(payload)
