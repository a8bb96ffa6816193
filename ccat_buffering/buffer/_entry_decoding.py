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

A step is read by its shape: the first step of a (step id, operation, model,
number of fields) is checked field by field, and its values but the payload,
its fields set (shared, as the models are frozen and pydantic copies it
before a change) and its key fields are kept; a later step of that shape
only has its payload checked. :func:`decode_shallow` also says whether a value
nests, which lets the drain skip the bracket count of
:func:`~ccat_buffering.write.payload_limits.payload_problem` for a short entry.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic_core import from_json

from ccat_buffering.write._codec import _DECODERS, decode_value
from ccat_buffering.write.identifiers import _KNOWN_IDENTIFIERS as _KNOWN
from ccat_buffering.write.identifiers import known_identifier
from ccat_buffering.write.models import FORMAT_VERSION, Operation, Step, Transaction

__all__ = ["decode_entry", "decode_shallow"]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z").match
_OPERATIONS = {op.value: op for op in Operation}
_UTC = dt.UTC
_ISO = dt.datetime.fromisoformat
# The members as module names: reading one off its class costs about 100 ns
# on Python 3.11 (the enum class's __getattr__), a name a few.
_CREATE = Operation.CREATE
_UPDATE = Operation.UPDATE
_DELETE = Operation.DELETE
_BULK_CREATE = Operation.BULK_CREATE
_BULK_UPDATE = Operation.BULK_UPDATE
_DEFAULT_KEY_LIST = ["id"]
_CONTAINERS = frozenset((dict, list))
# The fields a step of each operation may carry here: its payload, and its
# base for an update or a delete. Anything else (a payload it does not take,
# a bulk update's bases per row, a field the model does not know) is
# _Unusual, so this one subset check stands for the operation's shape.
_COMMON = ("step_id", "operation", "model", "key_fields")
_ALLOWED = {
    _CREATE: frozenset((*_COMMON, "data")),
    _UPDATE: frozenset((*_COMMON, "key", "data", "expected", "expected_version")),
    _DELETE: frozenset((*_COMMON, "key", "expected", "expected_version")),
    _BULK_CREATE: frozenset((*_COMMON, "records")),
    _BULK_UPDATE: frozenset((*_COMMON, "records")),
}
# Every field of a model, in its declared order, at its default: a model's
# values are a copy of these (a dict copied keeps its keys' table: a fraction
# of building one from twelve pairs) with the entry's values stored over.
# Step._refs (a cached property) is found already: a ref() is _Unusual here.
_STEP_VALUES: dict[str, Any] = {name: field.default for name, field in Step.model_fields.items()}
_STEP_VALUES["_refs"] = ()
_TX_GIVEN = {"format_version", "transaction_id", "endpoint", "steps", "created_at"}
_TX_GIVEN_TRACED = {*_TX_GIVEN, "trace_context"}
_BASE_FIELDS = frozenset(("expected", "expected_version", "expected_records", "expected_versions"))
# A step's every field but its payload, by (step id, operation, model, number
# of fields) of a step seen before without a base: its fields set, its key
# fields as the entry writes them, and its operation. A step that matches one
# has those very fields (its count, and each read by name) and names checked.
_SHAPES: dict[tuple[Any, Any, Any, int], tuple[dict[str, Any], set[str], Any, Operation]] = {}
_SHAPES_LIMIT = 4096
# A model made as pydantic's own validator makes it (its __dict__, the fields
# set, no extra, no private values), through BaseModel's slot descriptors:
# their bound setters cost about half of object.__setattr__ each.
_M = TypeVar("_M", bound=BaseModel)
_new = object.__new__
_set_values = BaseModel.__dict__["__dict__"].__set__
_set_given = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


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


def _record(value: Any, shallow: bool) -> Any:
    """``value`` (the parsed JSON, reused) with its tagged values decoded.

    With ``shallow``, a value that decodes to a list or a mapping is _Unusual
    (the entry's depth is then not known from its shape).
    """
    if not _KNOWN.issuperset(value):  # names seen before: the common case, in C
        for name in value:
            _identifier(name)
    # Not a mapping (a list of known names, a text of them): no values().
    for item in value.values():
        if type(item) in _CONTAINERS:
            break
    else:
        return value  # plain values only: the common record
    for name, item in value.items():
        if type(item) in _CONTAINERS:
            if type(item) is dict and len(item) == 1:
                (tag,) = item
                decoder = _DECODERS.get(tag)
                if decoder is not None:  # a datetime, a UUID, a Decimal...: not a container
                    value[name] = decoder(item[tag])
                    continue
                if tag == "$ref":
                    raise _Unusual  # a ref(): rare, and the full validation checks its target
            decoded = decode_value(item)
            if shallow and type(decoded) in _CONTAINERS:
                raise _Unusual
            value[name] = decoded  # the same keys: safe while iterating
    return value


def _made(cls: type[_M], values: dict[str, Any], given: set[str]) -> _M:
    made = _new(cls)
    _set_values(made, values)
    _set_given(made, given)
    _set_extra(made, None)
    _set_private(made, None)
    return made


def _payload(
    raw: dict[str, Any], operation: Operation, values: dict[str, Any], shallow: bool
) -> None:
    """The step's data, key or records, checked and decoded into ``values``; no base."""
    if operation is _CREATE:
        values["data"] = _record(raw["data"], shallow)
    elif operation is _BULK_CREATE or operation is _BULK_UPDATE:
        records = raw["records"]
        if type(records) is not list or not records:
            raise _Unusual
        for record in records:  # decoded in place: the parsed list is the step's own
            # _record's common case inline: known names, plain values.
            if _KNOWN.issuperset(record):
                for item in record.values():
                    if type(item) in _CONTAINERS:
                        break
                else:
                    continue
            _record(record, shallow)
        values["records"] = records
        if operation is _BULK_UPDATE:
            key_fields = values["key_fields"]
            if any(f not in r for r in records for f in key_fields):
                raise _Unusual
    else:
        if operation is _UPDATE:
            values["data"] = _record(raw["data"], shallow)
        key = values["key"] = _record(raw["key"], shallow)
        if not key:
            raise _Unusual


def _new_step(raw: Any, shallow: bool) -> Step:
    """A step of a shape not seen yet (remembered if it has no base), or with a base."""
    given = set(raw)
    operation = _OPERATIONS[raw["operation"]]
    if not given <= _ALLOWED[operation]:
        raise _Unusual
    step_id = _identifier(raw["step_id"])
    model = _identifier(raw["model"])
    values = _STEP_VALUES.copy()
    values["step_id"] = step_id
    values["operation"] = operation
    values["model"] = model
    key_fields = raw.get("key_fields", _DEFAULT_KEY_LIST)
    if key_fields != _DEFAULT_KEY_LIST:  # as to_json writes the default (a list)
        if type(key_fields) is not list:
            raise _Unusual
        values["key_fields"] = tuple(_identifier(name) for name in key_fields)
    _payload(raw, operation, values, shallow)
    if _BASE_FIELDS.isdisjoint(given):
        if "key_fields" in given and len(_SHAPES) < _SHAPES_LIMIT:
            # This step's every field but its payload, for the next step of its shape.
            template = {**values, "data": None, "key": None, "records": None}
            _SHAPES[step_id, operation.value, model, len(raw)] = (
                template,
                given.copy(),
                key_fields,
                operation,
            )
    else:
        expected = raw.get("expected")
        if expected is not None:
            values["expected"] = _record(expected, shallow)
        version = raw.get("expected_version")
        if version is not None:
            if type(version) is not int:
                raise _Unusual
            values["expected_version"] = version
    return _made(Step, values, given)


def _lean(payload: str, shallow: bool) -> Transaction:
    # One function, one loop over the steps: on Python 3.11 a call costs about
    # as much as two of a model's slots set, and a transaction took ~16 calls.
    # pydantic's own JSON parser (the one Transaction.from_json reads with): a
    # third of the json module's instructions. Every short text cached, not
    # only the keys: a step's id, operation and model are then the very
    # objects of the entry before, which the shape and the names are found by
    # (-2 % of the decode, against a lookup per value that never repeats).
    # NaN or Infinity (never written by to_json) raise: the full validation decides.
    raw = from_json(payload, allow_inf_nan=False, cache_strings=True)
    # The five fields to_json writes, and the trace context if any: read by
    # name, so that the count stands for the check that there are no others.
    version = raw["format_version"]
    transaction_id = raw["transaction_id"]
    endpoint = raw["endpoint"]
    steps_raw = raw["steps"]
    created = raw["created_at"]
    if len(raw) == 5:
        trace = None
        given = _TX_GIVEN
    else:
        trace = raw["trace_context"]
        if len(raw) != 6 or (
            trace is not None
            and (
                type(trace) is not dict
                or not all(type(k) is str and type(v) is str for k, v in trace.items())
            )
        ):
            raise _Unusual
        given = _TX_GIVEN_TRACED
    # A transaction id or a creation time that is not text, steps that are
    # not a list of mappings: a TypeError below, and the full validation decides.
    if (
        type(version) is not int
        or not 1 <= version <= FORMAT_VERSION
        or _UUID(transaction_id) is None
        or not steps_raw
        or type(steps_raw) is not list
    ):
        raise _Unusual
    created_at = _ISO(created)  # a ValueError: the full validation decides
    if created_at.tzinfo is not _UTC:
        if created_at.tzinfo is None:
            raise _Unusual
        created_at = created_at.astimezone(_UTC)
    steps = []
    ids = set()
    for item in steps_raw:
        step_id = item["step_id"]
        ids.add(step_id)
        shape = _SHAPES.get((step_id, item["operation"], item["model"], len(item)))
        if shape is None or item["key_fields"] != shape[2]:
            step = _new_step(item, shallow)
            fields = step.__dict__
            if fields["expected"] is not None or fields["expected_version"] is not None:
                # Transaction's own check raises the format to the one its steps need.
                version = max(version, 2)
        else:
            values = shape[0].copy()
            operation = shape[3]
            if operation is _CREATE:
                values["data"] = _record(item["data"], shallow)
            else:
                _payload(item, operation, values, shallow)
            step = _new(Step)
            _set_values(step, values)
            _set_given(step, shape[1])
            _set_extra(step, None)
            _set_private(step, None)
        steps.append(step)
    if len(ids) != len(steps):
        raise _Unusual
    if endpoint not in _KNOWN:
        _identifier(endpoint)
    transaction = _new(Transaction)
    _set_values(
        transaction,
        {
            "format_version": version,
            "transaction_id": transaction_id,
            "endpoint": endpoint,
            "steps": steps,
            "created_at": created_at,
            "trace_context": trace,
        },
    )
    _set_given(transaction, given)
    _set_extra(transaction, None)
    _set_private(transaction, None)
    return transaction


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
        return _lean(payload, False)
    except Exception:
        # Anything unexpected (a damaged entry, a value decode_value refuses):
        # the full validation reads it or says exactly what is wrong.
        return Transaction.from_json(payload)


def decode_shallow(payload: str) -> Transaction | None:
    """The transaction a claimed entry holds, if it has the common shape and no value nests.

    Such an entry nests at most 7 levels (the transaction, its steps, a step,
    its records, a record, a tagged value, a ``$timedelta``'s list), far
    below :data:`~ccat_buffering.write.payload_limits.MAX_DEPTH`.

    Returns:
        The transaction, equal to what :meth:`Transaction.from_json` reads, or
        ``None``: :func:`decode_entry` decides.
    """
    try:
        return _lean(payload, True)
    except Exception:
        return None
