"""What a buffered write is: a transaction of steps, and the format it is buffered in.

A :class:`Transaction` is what a site buffers (its steps are in
:mod:`ccat_buffering.write.steps`); it survives upgrades because it
carries :data:`FORMAT_VERSION` and serialises losslessly (datetimes, UUIDs and
Decimals come back as they went in). A :class:`TransactionStatus` is what the
caller can ask about it while it travels to the main database.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Self

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticSerializationError

from ccat_buffering.errors import PayloadTooLargeError, TransactionValidationError
from ccat_buffering.write._transaction_json import plain_json
from ccat_buffering.write.identifiers import Identifier, check_identifier
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.payload_limits import payload_problem
from ccat_buffering.write.status import TransactionState, TransactionStatus, UTCDatetime, utc_now
from ccat_buffering.write.steps import Operation, Ref, Step

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
_is = operator.is_


def _new_transaction_id() -> str:
    return str(uuid.uuid4())


def _canonical_uuid(value: str) -> str:
    return str(uuid.UUID(value))


class Transaction(BaseModel):
    """A group of steps that apply to the main database all together or not at all.

    Construct one with :class:`~ccat_buffering.write.builder.TransactionBuilder`.
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
    :mod:`ccat_buffering.drain.tracing`); ``None`` when nothing traced the submit."""

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
                long: see :mod:`ccat_buffering.write.payload_limits`).
            PayloadTooLargeError: The JSON text is larger than the limit.
        """
        values = self.__dict__
        steps = values["steps"]
        # The fields it was made from (held, so that their ids stay theirs).
        key = (
            steps,
            *steps,
            values["format_version"],
            values["transaction_id"],
            values["endpoint"],
            values["created_at"],
            values["trace_context"],
        )
        memo = values.get("_json")
        if memo is not None and len(memo[0]) == len(key) and all(map(_is, memo[0], key)):
            # Made before from these very values (build() makes it): a frozen
            # transaction's JSON is made once.
            text: str = memo[1]
        else:
            text = plain_json(self) or self._pydantic_json()
            values["_json"] = (key, text)
        problem = payload_problem(text, max_payload_bytes)
        if problem is not None:
            kind, what = problem
            fix = ": split it, or raise max_payload_bytes" if kind is PayloadTooLargeError else ""
            raise kind(f"transaction {self.transaction_id} ({self.endpoint}) {what}{fix}")
        return text

    def _pydantic_json(self) -> str:
        """The JSON text as pydantic writes it (the shapes :func:`plain_json` leaves to it)."""
        try:
            return self.model_dump_json(exclude_none=True)
        except PydanticSerializationError as exc:
            # pydantic wraps what a field serializer raised; give back our own error.
            message = str(exc)
            marker = "TransactionValidationError: "
            if marker not in message and "surrogates not allowed" in message:
                where = self._not_utf8() or "a value"
                message = f"{where} holds a lone surrogate, which is not UTF-8"
            raise TransactionValidationError(message.split(marker, 1)[-1]) from None

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
