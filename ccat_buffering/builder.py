"""Build transactions step by step, with keys known before the database sees them.

Example::

    tx = TransactionBuilder(endpoint="start_observation")
    obs = tx.create("ExecutedObsUnit", {"obs_unit_id": 7, "status": "running"})
    tx.create("RawDataPackage", {"executed_obs_unit_id": obs.id, "name": "pkg-1"})
    transaction = tx.build()
    # obs.id is usable at once: as a foreign key above, and in the caller's reply.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.models import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Operation,
    Ref,
    Step,
    Transaction,
    validation_error,
)

__all__ = ["RecordHandle", "TransactionBuilder"]

ModelLike = str | type[Any]
"""A model's name, or the SQLAlchemy mapped class itself."""


@dataclass(frozen=True)
class RecordHandle:
    """The record a step writes, as the caller may use it before it exists.

    Attributes:
        step_id: The step that writes it.
        model: The model's name.
        id: The pre-generated key (a UUID string), or ``None`` where the
            database assigns it (then use :meth:`ref`).
    """

    step_id: str
    model: str
    id: str | None

    def ref(self, field: str) -> Ref:
        """Refer to a value of this record that only the database produces.

        Args:
            field: The attribute to read once the step has been applied.

        Returns:
            A :class:`~ccat_buffering.models.Ref`, resolved at execution.
        """
        return Ref(step=self.step_id, field=field)


def _describe(model: ModelLike) -> tuple[str, tuple[str, ...], bool]:
    """Return the model's name, its key fields, and whether to pre-generate a key."""
    if isinstance(model, str):
        return model, ("id",), True
    from sqlalchemy import inspect
    from sqlalchemy.exc import NoInspectionAvailable

    try:
        mapper = inspect(model)
    except NoInspectionAvailable:
        raise TransactionValidationError(
            f"{model!r} is neither a model name nor an SQLAlchemy mapped class"
        ) from None
    columns = list(mapper.primary_key)
    names = tuple(mapper.get_property_by_column(c).key for c in columns)
    generate = False
    if len(columns) == 1:
        try:
            python_type = columns[0].type.python_type
        except NotImplementedError:
            python_type = object
        generate = python_type in (str, uuid.UUID)
    return model.__name__, names, generate


class TransactionBuilder:
    """Collects the steps of one transaction.

    Args:
        endpoint: What the transaction does, in the service's words
            (``"start_observation"``); a plain identifier.
        transaction_id: A UUID to use instead of a new one.
        max_payload_bytes: Size limit checked by :meth:`build`.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        transaction_id: str | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.endpoint = endpoint
        self.transaction_id = transaction_id or str(uuid.uuid4())
        self.max_payload_bytes = max_payload_bytes
        self._steps: list[Step] = []

    def _step_id(self, step_id: str | None) -> str:
        return step_id if step_id is not None else f"s{len(self._steps)}"

    def _add(self, **fields: Any) -> Step:
        try:
            step = Step(**fields)
        except pydantic.ValidationError as exc:
            error = validation_error(exc)
            raise TransactionValidationError(
                f"step {len(self._steps)} ({fields['operation']} {fields['model']}): {error}"
            ) from None
        self._steps.append(step)
        return step

    def create(
        self, model: ModelLike, data: Mapping[str, Any], *, step_id: str | None = None
    ) -> RecordHandle:
        """Add a step that inserts one row.

        A single string or UUID key missing from ``data`` is pre-generated as a
        UUID string, so that the caller has the id before the row exists.

        Args:
            model: The mapped class or its name.
            data: Column values; may hold :class:`~ccat_buffering.models.Ref`.
            step_id: A name for the step, for references; default ``s<n>``.

        Returns:
            A handle on the new record.
        """
        name, key_fields, generate = _describe(model)
        values = dict(data)
        if len(key_fields) == 1 and key_fields[0] not in values and generate:
            values[key_fields[0]] = str(uuid.uuid4())
        step = self._add(
            step_id=self._step_id(step_id),
            operation=Operation.CREATE,
            model=name,
            data=values,
            key_fields=key_fields,
        )
        record_id = values.get(key_fields[0]) if len(key_fields) == 1 else None
        shown = None if record_id is None or isinstance(record_id, Ref) else str(record_id)
        return RecordHandle(step.step_id, name, shown)

    def _key(self, model: ModelLike, key: Any) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        name, key_fields, _ = _describe(model)
        if isinstance(key, Mapping):
            if isinstance(model, str):
                return name, tuple(key), dict(key)
            if set(key) != set(key_fields):
                raise TransactionValidationError(
                    f"{name}'s key is {key_fields}, but the key given names {tuple(key)}"
                )
            # In the model's key order, so that the record's cache id is the same
            # whichever order the caller wrote the key in.
            return name, key_fields, {field: key[field] for field in key_fields}
        if len(key_fields) != 1:
            raise TransactionValidationError(
                f"{name} has the composite key {key_fields}: pass the key as a mapping"
            )
        return name, key_fields, {key_fields[0]: key}

    def update(
        self,
        model: ModelLike,
        key: Any,
        data: Mapping[str, Any],
        *,
        step_id: str | None = None,
    ) -> RecordHandle:
        """Add a step that changes fields of one existing row.

        Args:
            model: The mapped class or its name.
            key: The row's key value, or a mapping of key fields to values.
            data: The fields to change.
            step_id: A name for the step.

        Returns:
            A handle on the record.
        """
        name, key_fields, key_values = self._key(model, key)
        step = self._add(
            step_id=self._step_id(step_id),
            operation=Operation.UPDATE,
            model=name,
            key=key_values,
            data=dict(data),
            key_fields=key_fields,
        )
        value = next(iter(key_values.values())) if len(key_values) == 1 else None
        shown = None if value is None or isinstance(value, Ref) else str(value)
        return RecordHandle(step.step_id, name, shown)

    def delete(self, model: ModelLike, key: Any, *, step_id: str | None = None) -> None:
        """Add a step that deletes one row.

        Args:
            model: The mapped class or its name.
            key: The row's key value, or a mapping of key fields to values.
            step_id: A name for the step.
        """
        name, key_fields, key_values = self._key(model, key)
        self._add(
            step_id=self._step_id(step_id),
            operation=Operation.DELETE,
            model=name,
            key=key_values,
            key_fields=key_fields,
        )

    def bulk_create(
        self,
        model: ModelLike,
        records: Sequence[Mapping[str, Any]],
        *,
        step_id: str | None = None,
    ) -> list[RecordHandle]:
        """Add a step that inserts many rows of one model.

        Args:
            model: The mapped class or its name.
            records: Column values per row; keys are pre-generated as in :meth:`create`.
            step_id: A name for the step.

        Returns:
            A handle per record, in order.
        """
        name, key_fields, generate = _describe(model)
        rows = [dict(r) for r in records]
        if len(key_fields) == 1 and generate:
            for row in rows:
                row.setdefault(key_fields[0], str(uuid.uuid4()))
        step = self._add(
            step_id=self._step_id(step_id),
            operation=Operation.BULK_CREATE,
            model=name,
            records=rows,
            key_fields=key_fields,
        )
        handles = []
        for row in rows:
            value = row.get(key_fields[0]) if len(key_fields) == 1 else None
            shown = None if value is None or isinstance(value, Ref) else str(value)
            handles.append(RecordHandle(step.step_id, name, shown))
        return handles

    def bulk_update(
        self,
        model: ModelLike,
        records: Sequence[Mapping[str, Any]],
        *,
        step_id: str | None = None,
    ) -> None:
        """Add a step that changes many rows of one model, each found by its key fields.

        Args:
            model: The mapped class or its name.
            records: Per row, its key fields and the fields to change.
            step_id: A name for the step.
        """
        name, key_fields, _ = _describe(model)
        self._add(
            step_id=self._step_id(step_id),
            operation=Operation.BULK_UPDATE,
            model=name,
            records=[dict(r) for r in records],
            key_fields=key_fields,
        )

    def build(self) -> Transaction:
        """Validate and return the transaction.

        Returns:
            The transaction, ready for ``submit`` or ``TransactionManager.buffer``.

        Raises:
            TransactionValidationError: Empty, inconsistent, not serialisable, or
                over the size limit; the message names the problem.
        """
        transaction = Transaction.validate_python(
            {
                "transaction_id": self.transaction_id,
                "endpoint": self.endpoint,
                "steps": list(self._steps),
            }
        )
        transaction.to_json(self.max_payload_bytes)
        return transaction
