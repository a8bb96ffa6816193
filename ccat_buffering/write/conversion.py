"""A step converted by its model's columns, once, when it is built.

:func:`convert_step` gives a step whose every value has its column's Python
type (see :mod:`ccat_buffering.write.columns` for the rules) and whose
Python-side defaults and write-time values are filled in, so the buffer holds
what the direct write would have written.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.write.columns import ModelColumns
from ccat_buffering.write.status import utc_now
from ccat_buffering.write.steps import Operation, Step

__all__ = ["convert_step", "is_converted"]


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
