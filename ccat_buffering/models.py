"""What a buffered write is: operations, steps, transactions and their status.

A :class:`Transaction` is what a site buffers; it survives upgrades because it
carries :data:`FORMAT_VERSION` and serialises losslessly (datetimes, UUIDs and
Decimals come back as they went in). A :class:`TransactionStatus` is what the
caller can ask about it while it travels to the main database.
"""

from __future__ import annotations

import enum
import functools
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Self

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticSerializationError

from ccat_buffering._codec import PLAIN_TYPES, decode_value, encode_value
from ccat_buffering.errors import PayloadTooLargeError, TransactionValidationError
from ccat_buffering.identifiers import Identifier, check_identifier, known_identifier
from ccat_buffering.lsn import LSN
from ccat_buffering.payload_limits import payload_problem
from ccat_buffering.status import TransactionState, TransactionStatus, UTCDatetime, utc_now

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "FORMAT_VERSION",
    "LSN",
    "Identifier",
    "Operation",
    "Ref",
    "Step",
    "Transaction",
    "TransactionState",
    "TransactionStatus",
    "check_identifier",
    "utc_now",
]

FORMAT_VERSION = 2
"""Newest format of a serialised transaction this release reads.

Format 1 has no bases; format 2 adds a step's ``expected`` and
``expected_version`` (and a bulk update's ``expected_records`` and
``expected_versions``, see :mod:`ccat_buffering.conflicts`). A transaction
without a base is still written as format 1, so that the buffer stays readable
by a release that knows only format 1; one with a base is written as format 2,
which such a release refuses instead of applying it without its check.
"""

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


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


def _encode_record(record: Mapping[str, Any], path: str) -> dict[str, Any]:
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

    @field_serializer("data", "key", "expected")
    def _encode_mapping(self, value: Record | None) -> dict[str, Any] | None:
        return None if value is None else _encode_record(value, f"{self.step_id}")

    @field_serializer("records", "expected_records")
    def _encode_records(self, value: list[Record] | None) -> list[dict[str, Any]] | None:
        if value is None:
            return None
        return [_encode_record(r, f"{self.step_id}[{i}]") for i, r in enumerate(value)]

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


def _new_transaction_id() -> str:
    return str(uuid.uuid4())


def _canonical_uuid(value: str) -> str:
    return str(uuid.UUID(value))


class Transaction(BaseModel):
    """A group of steps that apply to the main database all together or not at all.

    Construct one with :class:`~ccat_buffering.builder.TransactionBuilder`.
    """

    model_config = ConfigDict(frozen=True)

    format_version: int = 1
    transaction_id: Annotated[str, AfterValidator(_canonical_uuid)] = Field(
        default_factory=_new_transaction_id
    )
    endpoint: Identifier
    steps: list[Step] = Field(min_length=1)
    created_at: UTCDatetime = Field(default_factory=utc_now)
    trace_context: dict[str, str] | None = None
    """The submitting caller's trace context (W3C ``traceparent``/``tracestate``),
    carried through the buffer so that the drain links to it (see
    :mod:`ccat_buffering.tracing`); ``None`` when nothing traced the submit."""

    @field_serializer("format_version")
    def _written_format(self, value: int) -> int:
        # The oldest format that holds what the steps carry (see FORMAT_VERSION).
        return max(value, self.needed_format())

    def needed_format(self) -> int:
        """The oldest format that holds this transaction (2 once a step carries a base)."""
        return 2 if any(step.has_base for step in self.steps) else 1

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"format version {value} does not exist: versions start at 1")
        if value > FORMAT_VERSION:
            raise ValueError(
                f"format version {value} is not readable by this release, which reads "
                f"1 to {FORMAT_VERSION}: upgrade ccat-buffering before draining this buffer"
            )
        return value

    @model_validator(mode="after")
    def _steps_are_consistent(self) -> Self:
        if self.format_version < self.needed_format():
            # Frozen: set once here, while the model is being made.
            object.__setattr__(self, "format_version", self.needed_format())
        seen: dict[str, Step] = {}
        for index, step in enumerate(self.steps):
            if step.step_id in seen:
                raise ValueError(f"steps[{index}]: step id {step.step_id!r} is used twice")
            for ref in step.refs():
                target = seen.get(ref.step)
                if target is None:
                    later = any(s.step_id == ref.step for s in self.steps[index:])
                    where = "comes later" if later else "does not exist"
                    raise ValueError(
                        f"steps[{index}] ({step.step_id}): ref to step {ref.step!r}, which {where}"
                    )
                if target.operation not in (Operation.CREATE, Operation.UPDATE):
                    raise ValueError(
                        f"steps[{index}] ({step.step_id}): ref to step {ref.step!r}, a "
                        f"{target.operation} step; only create and update steps can be read"
                    )
            seen[step.step_id] = step
        return self

    def to_json(self, max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
        """Serialise losslessly, checking the size limit.

        Args:
            max_payload_bytes: Largest accepted size in bytes; ``None`` for no limit.

        Returns:
            The JSON text.

        Raises:
            TransactionValidationError: A value cannot be serialised, or the
                drain could not read the text (nested too deep, an integer too
                long: see :mod:`ccat_buffering.payload_limits`).
            PayloadTooLargeError: The JSON text is larger than the limit.
        """
        try:
            text = self.model_dump_json(exclude_none=True)
        except PydanticSerializationError as exc:
            # pydantic wraps what a field serializer raised; give back our own error.
            message = str(exc)
            marker = "TransactionValidationError: "
            if marker not in message and "surrogates not allowed" in message:
                where = self._not_utf8() or "a value"
                message = f"{where} holds a lone surrogate, which is not UTF-8"
            raise TransactionValidationError(message.split(marker, 1)[-1]) from None
        problem = payload_problem(text, max_payload_bytes)
        if problem is not None:
            kind, what = problem
            fix = ": split it, or raise max_payload_bytes" if kind is PayloadTooLargeError else ""
            raise kind(f"transaction {self.transaction_id} ({self.endpoint}) {what}{fix}")
        return text

    def _not_utf8(self) -> str | None:
        """Where the first text that UTF-8 cannot encode sits (``s0.name``), if any."""

        def bad(value: Any) -> bool:
            if isinstance(value, str):
                try:
                    value.encode()
                except UnicodeEncodeError:
                    return True
                return False
            if isinstance(value, Mapping):
                return any(bad(k) or bad(v) for k, v in value.items())
            return isinstance(value, list | tuple) and any(bad(v) for v in value)

        for step in self.steps:
            for record in [
                step.data or {},
                step.key or {},
                step.expected or {},
                *(step.records or []),
            ]:
                for name, value in record.items():
                    if bad(value):
                        return f"{step.step_id}.{name}"
        return None

    @classmethod
    def from_json(cls, text: str | bytes) -> Transaction:
        """Load a transaction serialised by this or an earlier release.

        Args:
            text: JSON text from :meth:`to_json`.

        Returns:
            The transaction.

        Raises:
            TransactionValidationError: The text is not a valid transaction; the
                message names the offending field.
        """
        try:
            return cls.model_validate_json(text, context={"wire": True})
        except pydantic.ValidationError as exc:
            raise validation_error(exc) from None

    @classmethod
    def validate_python(cls, data: Mapping[str, Any]) -> Transaction:
        """Build a transaction from Python values, raising the library's error.

        Args:
            data: Field values.

        Returns:
            The transaction.

        Raises:
            TransactionValidationError: The message names the offending field.
        """
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise validation_error(exc) from None


def validation_error(exc: pydantic.ValidationError) -> TransactionValidationError:
    """Turn pydantic's error into one that names each offending field plainly.

    Args:
        exc: The error pydantic raised.

    Returns:
        The library's error, with one line per problem.
    """
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "transaction"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return TransactionValidationError(f"invalid {exc.title}: " + "; ".join(lines))
