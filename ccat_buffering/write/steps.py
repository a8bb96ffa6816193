"""One step of a transaction: an operation on one model, its records, and refs between steps.

A :class:`Step` carries exactly the payload its :class:`Operation` needs
(checked when it is built); its values serialise losslessly through
:mod:`ccat_buffering.write._codec`, and a :class:`Ref` reads a value only the
database can produce from an earlier step.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.write._codec import PLAIN_TYPES, decode_value, encode_value
from ccat_buffering.write.identifiers import Identifier, known_identifier

__all__ = ["Operation", "Ref", "Record", "Step"]


class Operation(enum.StrEnum):
    """What a step does to the rows of its model."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    BULK_CREATE = "bulk_create"
    BULK_UPDATE = "bulk_update"


class Ref(BaseModel):
    """A value that only the database can produce, read from an earlier step.

    Args:
        step: The step id of an earlier ``create`` or ``update`` step.
        field: The attribute of that step's row to read after it is written.
    """

    model_config = ConfigDict(frozen=True)

    step: Identifier
    field: Identifier


Record = dict[str, Any]


def encode_record(record: Mapping[str, Any], path: str) -> dict[str, Any]:
    """A record's values as a transaction's JSON carries them (a ``ref()`` as ``{"$ref": ...}``).

    Raises:
        TransactionValidationError: A value that cannot be buffered, named by ``path``.
    """
    out: dict[str, Any] = {}
    for name, value in record.items():
        if type(value) in PLAIN_TYPES:
            out[name] = value
        elif isinstance(value, Ref):
            out[name] = {"$ref": {"step": value.step, "field": value.field}}
        else:
            try:
                out[name] = encode_value(value, f"{path}.{name}")
            except TypeError as exc:
                raise TransactionValidationError(str(exc)) from None
    return out


def _decode_record(record: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, dict) and len(value) == 1 and "$ref" in value:
            out[name] = Ref.model_validate(value["$ref"])
        else:
            out[name] = decode_value(value)
    return out


def _check_field_names(record: Mapping[str, Any]) -> Mapping[str, Any]:
    for name in record:
        known_identifier(name)
    return record


def _article(operation: Operation) -> str:
    return f"an {operation}" if operation.value[0] in "aeiou" else f"a {operation}"


class Step(BaseModel):
    """One operation on one model inside a transaction.

    Which payload fields a step carries depends on its operation:

    ============  ==================================================
    create        ``data`` (includes the pre-generated key, if any)
    update        ``key`` and ``data``
    delete        ``key``
    bulk_create   ``records``
    bulk_update   ``records``, each holding its key fields
    ============  ==================================================

    ``key_fields`` names the primary-key fields of the model, which identify
    the records that a ``create`` or bulk step writes in the caches.

    An ``update`` or ``delete`` may carry the *base* it was made against:
    ``expected``, the values of the fields it changes (of the row, for a
    delete) as the writer saw them, and ``expected_version``, the row's
    version where the model has a SQLAlchemy ``version_id_col``. The main
    database applies the step only where the row still holds that base (see
    :mod:`ccat_buffering.conflicts`); a step with neither is applied as it is.
    A ``bulk_update`` carries the same per record: ``expected_records[i]``
    (``{}``: none) and ``expected_versions[i]`` (``None``: none).
    """

    model_config = ConfigDict(frozen=True)

    step_id: Identifier
    operation: Operation
    model: Identifier
    data: Record | None = None
    key: Record | None = None
    records: list[Record] | None = None
    key_fields: tuple[Identifier, ...] = ("id",)
    expected: Record | None = None
    expected_version: int | None = None
    expected_records: list[Record] | None = None
    expected_versions: list[int | None] | None = None

    @property
    def has_base(self) -> bool:
        """Whether the step carries a base (``expected``, ``expected_version``, per record)."""
        return (
            self.expected is not None
            or self.expected_version is not None
            or self.expected_records is not None
            or self.expected_versions is not None
        )

    @field_validator("operation", mode="before")
    @classmethod
    def _known_operation(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in Operation._value2member_map_:
            known = ", ".join(op.value for op in Operation)
            raise ValueError(f"unknown operation {value!r}: use one of {known}")
        return value

    @field_validator("data", "key", "expected", mode="before")
    @classmethod
    def _decode_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.context and info.context.get("wire"):
            return _decode_record(value)
        return value

    @field_validator("records", "expected_records", mode="before")
    @classmethod
    def _decode_records(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.context and info.context.get("wire"):
            return [_decode_record(item) for item in value]
        return value

    @field_validator("data", "key", "expected")
    @classmethod
    def _names(cls, value: Record | None) -> Record | None:
        if value is not None:
            _check_field_names(value)
        return value

    @field_validator("records", "expected_records")
    @classmethod
    def _record_names(cls, value: list[Record] | None) -> list[Record] | None:
        for record in value or ():
            _check_field_names(record)
        return value

    @model_validator(mode="after")
    def _payload_fits_operation(self) -> Self:
        needs = {
            Operation.CREATE: {"data"},
            Operation.UPDATE: {"key", "data"},
            Operation.DELETE: {"key"},
            Operation.BULK_CREATE: {"records"},
            Operation.BULK_UPDATE: {"records"},
        }[self.operation]
        for name in ("data", "key", "records"):
            present = getattr(self, name) is not None
            if name in needs and not present:
                raise ValueError(f"{_article(self.operation)} step needs '{name}'")
            if name not in needs and present:
                raise ValueError(f"{_article(self.operation)} step takes no '{name}'")
        if self.key is not None and not self.key:
            raise ValueError("'key' names no field")
        single = self.expected is not None or self.expected_version is not None
        per_record = self.expected_records is not None or self.expected_versions is not None
        if (single and self.operation not in (Operation.UPDATE, Operation.DELETE)) or (
            per_record and self.operation is not Operation.BULK_UPDATE
        ):
            raise ValueError(
                f"{_article(self.operation)} step takes no base (expected, expected_version): "
                "only an update or a delete is made against one (a bulk_update per record)"
            )
        for name in ("expected_records", "expected_versions"):
            given = getattr(self, name)
            if given is not None and len(given) != len(self.records or ()):
                raise ValueError(
                    f"{name} holds {len(given)} bases for {len(self.records or ())} records: "
                    "give one per record"
                )
        if self.records is not None and not self.records:
            raise ValueError(f"{_article(self.operation)} step needs at least one record")
        if self.operation is Operation.BULK_UPDATE:
            for i, record in enumerate(self.records or ()):
                missing = [f for f in self.key_fields if f not in record]
                if missing:
                    raise ValueError(f"records[{i}] lacks its key field(s) {missing}")
        return self

    @field_serializer("data", "key", "expected", when_used="unless-none")
    def _encode_mapping(self, value: Record | None) -> dict[str, Any] | None:
        if value is None:
            return None
        if value is self.data:
            return self.encoded_data
        return encode_record(value, f"{self.step_id}")

    @property
    def encoded_data(self) -> dict[str, Any] | None:
        """``data`` as the transaction's JSON carries it (a ``ref()`` as ``{"$ref": ...}``).

        Made once per step: the JSON of the transaction and its cache writes
        (:func:`ccat_buffering.buffer.cache_writes.cache_writes`) share it. Kept
        with the very ``data`` it encodes, so that a copy with other data
        (``model_copy(update=...)``, as conversion makes) encodes its own.
        """
        data = self.data
        if data is None:
            return None
        memo = self.__dict__.get("_encoded_data")
        if memo is not None and memo[0] is data:
            return memo[1]  # type: ignore[no-any-return]
        encoded = encode_record(data, f"{self.step_id}")
        self.__dict__["_encoded_data"] = (data, encoded)
        return encoded

    @field_serializer("records", "expected_records", when_used="unless-none")
    def _encode_records(self, value: list[Record] | None) -> list[dict[str, Any]] | None:
        if value is None:
            return None
        return [encode_record(r, f"{self.step_id}[{i}]") for i, r in enumerate(value)]

    @functools.cached_property
    def _refs(self) -> tuple[Ref, ...]:
        # A step is frozen, and the drain asks several times per step (the
        # transaction's own check, the plan, the executor): find them once.
        found: list[Ref] = []
        for record in (self.data, self.key, *(self.records or ())):
            if record:
                for value in record.values():
                    if type(value) is Ref:
                        found.append(value)
        return tuple(found)

    def refs(self) -> list[Ref]:
        """Every :class:`Ref` among this step's values."""
        return list(self._refs)

    @property
    def has_refs(self) -> bool:
        """Whether any of this step's values is a :class:`Ref` (``bool(refs())``, no list made)."""
        return bool(self._refs)
