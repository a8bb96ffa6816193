"""Build transactions step by step, with keys known before the database sees them.

Example::

    tx = TransactionBuilder(endpoint="start_observation")
    obs = tx.create(ExecutedObsUnit, {"obs_unit_id": 7, "status": "running"})
    tx.create(RawDataPackage, {"executed_obs_unit_id": obs.id, "name": "pkg-1"})
    transaction = tx.build()
    # obs.id is usable at once: as a foreign key above, and in the caller's reply.

Given the mapped class (or a name and a registry), the builder converts every
value to its column's Python type and runs the columns' Python-side defaults
as each step is added (:mod:`ccat_buffering.columns`); given only a name, the
coordinator does the same when the transaction is submitted.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic

from ccat_buffering.columns import ModelColumns, columns_of, convert_step
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.models import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Operation,
    Ref,
    Step,
    Transaction,
    validation_error,
)

if TYPE_CHECKING:
    from ccat_buffering.registry import ModelRegistry
    from ccat_buffering.status import TransactionStatus

__all__ = ["RecordHandle", "TransactionBuilder", "with_generated_ids"]

ModelLike = str | type[Any]
"""A model's name, or the SQLAlchemy mapped class itself."""


@dataclass(frozen=True)
class RecordHandle:
    """The record a step writes, as the caller may use it before it exists.

    Attributes:
        step_id: The step that writes it.
        model: The model's name.
        id: The key as text, for URLs and replies (a UUID in its canonical
            form), or ``None`` where the database assigns it (then use :meth:`ref`).
        value: The key with its column's Python type (a ``uuid.UUID`` for a
            ``Uuid`` key), for the data of later steps; ``None`` as for ``id``.
    """

    step_id: str
    model: str
    id: str | None
    value: Any = None
    key_field: str | None = field(default=None, compare=False, repr=False)
    """The model's key field, when the key is one column."""

    def generated_id(self, status: TransactionStatus) -> Any:
        """The key the database gave this record, once ``status`` says it committed.

        Args:
            status: The status of the transaction that holds the step (from
                ``submit`` at a ``main`` site, or once ``committed``).

        Returns:
            The generated key (a JSON value), or :attr:`id` when the database
            gave none (a pre-generated key, or not committed yet).
        """
        if self.key_field is None:
            return self.id
        return status.generated.get(self.step_id, {}).get(self.key_field, self.id)

    def ref(self, field: str) -> Ref:
        """Refer to a value of this record that only the database produces.

        Args:
            field: The attribute to read once the step has been applied.

        Returns:
            A :class:`~ccat_buffering.models.Ref`, resolved at execution.
        """
        return Ref(step=self.step_id, field=field)


def _handle(step: Step, record: Mapping[str, Any]) -> RecordHandle:
    fields = step.key_fields
    single = fields[0] if len(fields) == 1 else None
    value = record.get(single) if single is not None else None
    if value is None or isinstance(value, Ref):
        return RecordHandle(step.step_id, step.model, None, key_field=single)
    return RecordHandle(step.step_id, step.model, str(value), value, key_field=single)


def with_generated_ids(result: Any, status: TransactionStatus) -> Any:
    """``result`` with every :class:`RecordHandle` in it replaced by its key.

    For a reply built before the transaction was submitted: a handler returns
    ``{"id": note}`` (the handle), and once the site has submitted the
    transaction the handle becomes the key, the database's own where it
    generated one (at a ``main`` site, at once). Looks into dicts, lists and
    tuples; anything else is returned as it is.

    Args:
        result: A route's return value.
        status: The submitted transaction's status.

    Returns:
        ``result`` with the handles replaced.
    """
    if isinstance(result, RecordHandle):
        return result.generated_id(status)
    if isinstance(result, dict):
        return {k: with_generated_ids(v, status) for k, v in result.items()}
    if isinstance(result, list | tuple):
        return type(result)(with_generated_ids(v, status) for v in result)
    return result


@dataclass(frozen=True)
class _Model:
    name: str
    key_fields: tuple[str, ...]
    columns: ModelColumns | None


def _not_a_model(model: object) -> TransactionValidationError:
    return TransactionValidationError(
        f"{model!r} is neither a model name nor an SQLAlchemy mapped class"
    )


def _describe(model: ModelLike, registry: ModelRegistry | None) -> _Model:
    """Name, key fields and column rules of a model given by class or by name."""
    if isinstance(model, str):
        if registry is not None and model in registry:
            return _Model(model, registry.key_fields(model), columns_of(registry.model(model)))
        return _Model(model, ("id",), None)
    from sqlalchemy import Table
    from sqlalchemy.exc import NoInspectionAvailable

    if isinstance(model, Table):
        raise TransactionValidationError(
            f"table {model.name!r} is a plain Table, not a mapped class: map it to a class "
            f"(__table__ = {model.name}), register that class, and write its rows by class"
        )
    try:
        columns = columns_of(model)
    except (NoInspectionAvailable, TypeError):
        raise _not_a_model(model) from None
    return _Model(model.__name__, columns.key_fields, columns)


class TransactionBuilder:
    """Collects the steps of one transaction.

    Args:
        endpoint: What the transaction does, in the service's words
            (``"start_observation"``); a plain identifier.
        transaction_id: A UUID to use instead of a new one.
        max_payload_bytes: Size limit checked by :meth:`build`.
        registry: Resolves model names to mapped classes, so that steps given
            by name are converted as steps given by class are.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        transaction_id: str | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        registry: ModelRegistry | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.transaction_id = transaction_id or str(uuid.uuid4())
        self.max_payload_bytes = max_payload_bytes
        self.registry = registry
        self._steps: list[Step] = []

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps added so far, in order (converted where the model was known)."""
        return tuple(self._steps)

    def _step_id(self, step_id: str | None) -> str:
        return step_id if step_id is not None else f"s{len(self._steps)}"

    def _add(self, model: _Model, **fields: Any) -> Step:
        where = f"step {len(self._steps)} ({fields['operation']} {model.name})"
        fields.setdefault("key_fields", model.key_fields)
        try:
            step = Step(model=model.name, **fields)
        except pydantic.ValidationError as exc:
            raise TransactionValidationError(f"{where}: {validation_error(exc)}") from None
        if model.columns is not None:
            step = convert_step(step, model.columns, where)
        self._steps.append(step)
        return step

    def _with_key(self, model: _Model, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data``, with a generated key where it gives none and one can be made."""
        values = dict(data)
        fields = model.key_fields
        if len(fields) != 1 or fields[0] in values:
            return values
        if model.columns is None:
            values[fields[0]] = str(uuid.uuid4())
            return values
        where = f"step {len(self._steps)} (create {model.name})"
        made, key = model.columns.generated_key(where)
        if made:
            values[fields[0]] = key
        return values

    def create(
        self, model: ModelLike, data: Mapping[str, Any], *, step_id: str | None = None
    ) -> RecordHandle:
        """Add a step that inserts one row.

        A single key missing from ``data`` is made now, so that the caller has
        the id before the row exists: the key column's own Python ``default=``
        if it has one, else a new UUID (a ``uuid.UUID`` for a ``Uuid`` column,
        its text for a text column); an autoincrement key is left to the database.

        Args:
            model: The mapped class or its name.
            data: Column values; may hold :class:`~ccat_buffering.models.Ref`.
            step_id: A name for the step, for references; default ``s<n>``.

        Returns:
            A handle on the new record.

        Raises:
            TransactionValidationError: A value its column cannot take (the
                message names the step, field, value and expected type), or a
                text key too short for a UUID and no default to make one.
        """
        described = _describe(model, self.registry)
        step = self._add(
            described,
            step_id=self._step_id(step_id),
            operation=Operation.CREATE,
            data=self._with_key(described, data),
        )
        return _handle(step, step.data or {})

    def _key(self, model: _Model, key: Any) -> dict[str, Any]:
        fields = model.key_fields
        if isinstance(key, Mapping):
            if model.columns is None:
                return dict(key)  # a model known by name only: the key names its fields
            if set(key) != set(fields):
                raise TransactionValidationError(
                    f"{model.name}'s key is {fields}, but the key given names {tuple(key)}"
                )
            # In the model's key order, so that the record's cache id is the same
            # whichever order the caller wrote the key in.
            return {field: key[field] for field in fields}
        if len(fields) != 1:
            raise TransactionValidationError(
                f"{model.name} has the composite key {fields}: pass the key as a mapping"
            )
        return {fields[0]: key}

    def update(
        self,
        model: ModelLike,
        key: Any,
        data: Mapping[str, Any],
        *,
        step_id: str | None = None,
        expected: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
    ) -> RecordHandle:
        """Add a step that changes fields of one existing row.

        Columns with a Python ``onupdate=`` that ``data`` does not set get it now.

        The step is applied only where the row still holds its base (see
        :mod:`ccat_buffering.conflicts`): ``expected`` and ``expected_version``
        state it; without them, a coordinator's ``submit`` takes it from the
        site's own view of the row.

        Args:
            model: The mapped class or its name.
            key: The row's key value, or a mapping of key fields to values.
            data: The fields to change.
            step_id: A name for the step.
            expected: The values of (some of) the changed fields as the writer
                saw them.
            expected_version: The row's ``version_id_col`` value as the writer
                saw it; the step sets the next one.

        Returns:
            A handle on the record.
        """
        described = _describe(model, self.registry)
        key_values = self._key(described, key)
        step = self._add(
            described,
            step_id=self._step_id(step_id),
            operation=Operation.UPDATE,
            key=key_values,
            key_fields=tuple(key_values),
            data=dict(data),
            expected=None if expected is None else dict(expected),
            expected_version=expected_version,
        )
        return _handle(step, step.key or {})

    def delete(
        self,
        model: ModelLike,
        key: Any,
        *,
        step_id: str | None = None,
        expected: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
    ) -> None:
        """Add a step that deletes one row.

        Args:
            model: The mapped class or its name.
            key: The row's key value, or a mapping of key fields to values.
            step_id: A name for the step.
            expected: Values of the row as the writer saw them; the row is
                deleted only where it still holds them.
            expected_version: The row's ``version_id_col`` value as the writer saw it.
        """
        described = _describe(model, self.registry)
        key_values = self._key(described, key)
        self._add(
            described,
            step_id=self._step_id(step_id),
            operation=Operation.DELETE,
            key=key_values,
            key_fields=tuple(key_values),
            expected=None if expected is None else dict(expected),
            expected_version=expected_version,
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
            records: Column values per row; keys are made as in :meth:`create`.
            step_id: A name for the step.

        Returns:
            A handle per record, in order.
        """
        described = _describe(model, self.registry)
        step = self._add(
            described,
            step_id=self._step_id(step_id),
            operation=Operation.BULK_CREATE,
            records=[self._with_key(described, r) for r in records],
        )
        return [_handle(step, record) for record in step.records or []]

    def bulk_update(
        self,
        model: ModelLike,
        records: Sequence[Mapping[str, Any]],
        *,
        step_id: str | None = None,
        expected: Sequence[Mapping[str, Any]] | None = None,
        expected_version: Sequence[int | None] | None = None,
    ) -> None:
        """Add a step that changes many rows of one model, each found by its key fields.

        Each row is checked against its own base, as :meth:`update` checks one.

        Args:
            model: The mapped class or its name.
            records: Per row, its key fields and the fields to change.
            step_id: A name for the step.
            expected: Per row, the values of (some of) its changed fields as
                the writer saw them (``{}``: none given).
            expected_version: Per row, its ``version_id_col`` value as the
                writer saw it (``None``: none given).
        """
        described = _describe(model, self.registry)
        self._add(
            described,
            step_id=self._step_id(step_id),
            operation=Operation.BULK_UPDATE,
            records=[dict(r) for r in records],
            expected_records=None if expected is None else [dict(e) for e in expected],
            expected_versions=None if expected_version is None else list(expected_version),
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
