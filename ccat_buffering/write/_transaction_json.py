"""A transaction's JSON as pydantic writes it, without pydantic's calls back into Python.

:meth:`~ccat_buffering.write.models.Transaction.to_json` runs for every
transaction buffered, and ``model_dump_json`` calls back into Python for the
format version and for each step's ``data``, ``key``, ``records`` and bases
(its field serializers): most of its cost. The same text comes from plain
dicts built here in the fields' declared order (``None`` fields left out),
with the steps' values encoded as those serializers encode them, written by
``pydantic_core.to_json``: the serializer ``model_dump_json`` itself uses for
what the field serializers return, so text, numbers and escapes come out the
same. A field of another type than validation makes (a subclass, say) gives
``None``, and so does anything ``to_json`` refuses (a value that cannot be
encoded, text that is not UTF-8): ``model_dump_json`` writes it, or raises its
error. ``tests/core/test_transaction_json.py`` holds the two to the same text.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from pydantic_core import to_json

from ccat_buffering.write.steps import Operation, Step, encode_record

if TYPE_CHECKING:
    from ccat_buffering.write.models import Transaction

__all__ = ["plain_json"]

_UTC = dt.UTC
_OPERATIONS = {op: op.value for op in Operation}


def _step(step: Step) -> tuple[dict[str, Any], bool] | None:
    """A step as ``model_dump_json(exclude_none=True)`` writes it, and whether it has a base."""
    values = step.__dict__
    step_id, model, key_fields = values["step_id"], values["model"], values["key_fields"]
    if type(step_id) is not str or type(model) is not str or type(key_fields) is not tuple:
        return None
    for name in key_fields:
        if type(name) is not str:
            return None
    out: dict[str, Any] = {
        "step_id": step_id,
        "operation": _OPERATIONS[values["operation"]],
        "model": model,
    }
    # Encoded as Step's field serializers encode them (data: the memo they share).
    if values["data"] is not None:
        out["data"] = step.encoded_data
    key, records = values["key"], values["records"]
    if key is not None:
        out["key"] = encode_record(key, step_id)
    if records is not None:
        out["records"] = [encode_record(r, f"{step_id}[{i}]") for i, r in enumerate(records)]
    out["key_fields"] = list(key_fields)
    expected, version = values["expected"], values["expected_version"]
    expected_records, versions = values["expected_records"], values["expected_versions"]
    if expected is None and version is None and expected_records is None and versions is None:
        return out, False
    if expected is not None:
        out["expected"] = encode_record(expected, step_id)
    if version is not None:
        if type(version) is not int:
            return None
        out["expected_version"] = version
    if expected_records is not None:
        out["expected_records"] = [
            encode_record(r, f"{step_id}[{i}]") for i, r in enumerate(expected_records)
        ]
    if versions is not None:
        if type(versions) is not list:
            return None
        for item in versions:
            if item is not None and type(item) is not int:
                return None
        out["expected_versions"] = versions
    return out, True


def plain_json(transaction: Transaction) -> str | None:
    """``transaction.model_dump_json(exclude_none=True)``, or ``None`` for a shape left to it.

    Raises nothing: whatever this cannot write, pydantic writes (or refuses
    with its own error).
    """
    try:
        values = transaction.__dict__
        version, transaction_id, endpoint = (
            values["format_version"],
            values["transaction_id"],
            values["endpoint"],
        )
        created, trace, steps = values["created_at"], values["trace_context"], values["steps"]
        if (
            type(version) is not int
            or type(transaction_id) is not str
            or type(endpoint) is not str
            or type(steps) is not list
            or type(created) is not dt.datetime
            or created.tzinfo is not _UTC
        ):
            return None
        written = []
        needed = 1
        for step in steps:
            if type(step) is not Step:
                return None
            made = _step(step)
            if made is None:
                return None
            written.append(made[0])
            if made[1]:
                needed = 2
        out: dict[str, Any] = {
            # The oldest format that holds the steps (Transaction._written_format).
            "format_version": version if version >= needed else needed,
            "transaction_id": transaction_id,
            "endpoint": endpoint,
            "steps": written,
            "created_at": created,
        }
        if trace is not None:
            if type(trace) is not dict:
                return None
            for item in trace.values():
                if type(item) is not str:
                    return None
            out["trace_context"] = trace
        return to_json(out).decode()
    except Exception:  # the full serialisation decides, and says what is wrong
        return None
