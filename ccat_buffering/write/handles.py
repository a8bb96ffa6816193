"""A record a builder wrote, as the caller holds it before the database has it.

A :class:`RecordHandle` gives the record's key at once (for foreign keys in
later steps and for the caller's reply), a :class:`~ccat_buffering.write.steps.Ref`
to a value only the database produces, and the generated key once the
transaction committed (:func:`with_generated_ids` for a whole reply).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ccat_buffering.write.steps import Ref, Step

if TYPE_CHECKING:
    from ccat_buffering.write.status import TransactionStatus

__all__ = ["RecordHandle", "record_handle", "with_generated_ids"]


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
            A :class:`~ccat_buffering.write.models.Ref`, resolved at execution.
        """
        return Ref(step=self.step_id, field=field)


def record_handle(step: Step, record: Mapping[str, Any]) -> RecordHandle:
    """The handle of the record ``record`` that ``step`` writes (its key, if given)."""
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
