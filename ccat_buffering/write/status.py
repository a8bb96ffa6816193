"""What is known of one buffered transaction: its state, attempts, errors and times."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python

from ccat_buffering.write.lsn import LSNField

__all__ = [
    "HISTORY_KEEP",
    "StatusEvent",
    "TransactionState",
    "TransactionStatus",
    "UTCDatetime",
    "as_json",
    "copied_status",
    "made_event",
    "made_status",
    "utc_now",
]


def utc_now() -> dt.datetime:
    """Return the current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def _to_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC)


UTCDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class TransactionState(enum.StrEnum):
    """Where a transaction is in its life (see docs/concepts)."""

    BUFFERED = "buffered"
    PROCESSING = "processing"
    RETRYING = "retrying"
    COMMITTED = "committed"
    REPLICATED = "replicated"
    FAILED = "failed"
    CONFLICTED = "conflicted"
    """A conflict its policy rejected (or a wait behind one): not applied, out of
    the queue, waiting for an operator's ``conflicts resolve``; never retried."""

    @property
    def is_terminal(self) -> bool:
        """Whether nothing more will happen to the transaction by itself."""
        return self in (TransactionState.REPLICATED, TransactionState.FAILED)


HISTORY_KEEP = 32
"""Events a status keeps: the first (buffered) and the latest after it."""


class StatusEvent(BaseModel):
    """One step of a transaction's life, as its status records it.

    Attributes:
        at: When it happened.
        event: How an attempt ended (``retrying``, ``failed``, ``committed``,
            or ``outage pause``: an outage sent it back to the head, counting
            nothing), or ``buffered``, ``replicated``, ``replayed``.
        note: The error, the outage's cause, the dead letter's reason, or the
            commit's LSN (at most :data:`NOTE_KEEP` characters).
        times: How many times it happened in a row, ``at`` being the last
            (an outage pauses the same batch again and again).
    """

    model_config = ConfigDict(frozen=True)

    at: UTCDatetime
    event: str
    note: str | None = None
    times: int = 1


NOTE_KEEP = 240
"""Characters of an event's note kept (a status lives in the buffer's memory)."""


def add_event(history: tuple[StatusEvent, ...], event: StatusEvent) -> tuple[StatusEvent, ...]:
    """``history`` with ``event`` appended, bounded, repeats folded into one event.

    An event equal to the last one (same event and note) is counted in it
    instead of added: a week-long outage pauses a transaction thousands of
    times, and its status lives in the buffer's memory.
    At most :data:`HISTORY_KEEP` events are kept: the first and the latest.
    """
    if event.note is not None and len(event.note) > NOTE_KEEP:
        event = event.model_copy(update={"note": event.note[: NOTE_KEEP - 1] + "…"})
    if history and (history[-1].event, history[-1].note) == (event.event, event.note):
        folded = history[-1].model_copy(update={"at": event.at, "times": history[-1].times + 1})
        return (*history[:-1], folded)
    events = (*history, event)
    if len(events) <= HISTORY_KEEP:
        return events
    return (events[0], *events[len(events) - HISTORY_KEEP + 1 :])


class TransactionStatus(BaseModel):
    """What is known of one buffered transaction.

    Attributes:
        transaction_id: The transaction this is about.
        endpoint: The endpoint that created it.
        state: Where it stands.
        attempts: Failed attempts counted against the retry policy (outages of
            the database do not count).
        last_error: The most recent error, if any.
        commit_lsn: WAL position of the main database's commit, once committed
            (``None`` on databases without one, such as SQLite).
        created_at: When it was buffered.
        updated_at: When this status last changed.
        committed_at: When the main database committed it.
        replicated_at: When the site's replica was seen to have replayed it.
        history: Every step of its life with its time (attempts, failures,
            outage pauses, replays), the first and the latest
            :data:`HISTORY_KEEP`, once its life left the routine; empty while
            it is routine (buffered, processing, committed, replicated: the
            times above tell it).
        generated: Once committed, the values the database computed for the
            transaction's creates (an identity key, server defaults), by step
            id then field, as JSON values (text for times, UUIDs and decimals).
    """

    model_config = ConfigDict(frozen=True)

    transaction_id: str
    endpoint: str = ""
    state: TransactionState
    attempts: int = 0
    last_error: str | None = None
    commit_lsn: LSNField | None = None
    created_at: UTCDatetime = Field(default_factory=utc_now)
    updated_at: UTCDatetime = Field(default_factory=utc_now)
    committed_at: UTCDatetime | None = None
    replicated_at: UTCDatetime | None = None
    history: tuple[StatusEvent, ...] = ()
    generated: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def advance(self, state: TransactionState, **changes: Any) -> TransactionStatus:
        """Return a copy in ``state`` with ``updated_at`` set to now and ``changes``.

        Args:
            state: The new state.
            **changes: Other fields to change.

        Returns:
            The new status.
        """
        now = utc_now()
        event = StatusEvent(at=now, event=state.value, note=changes.get("last_error"))
        data = {**dict(self), "updated_at": now, **changes, "state": state}
        data["history"] = add_event(self.history, event)
        return TransactionStatus.model_validate(data)


_M = TypeVar("_M", bound=BaseModel)
_new = object.__new__
_set = object.__setattr__


def copied_status(status: TransactionStatus, update: dict[str, Any]) -> TransactionStatus:
    """``status.model_copy(update=update)`` for a fraction of its cost.

    Unvalidated: the drain copies each status three times with values that are
    already typed (states, aware UTC times, plain text).
    """
    return made_status(
        {**status.__dict__, **update}, status.__pydantic_fields_set__ | update.keys()
    )


def made_status(values: dict[str, Any], given: set[str]) -> TransactionStatus:
    """A status from every field's value, already typed, as ``model_construct`` makes it, for less.

    Args:
        values: Every field of :class:`TransactionStatus`, in its declared order.
        given: The fields set explicitly (``model_fields_set``).
    """
    return constructed(TransactionStatus, values, given)


def constructed(cls: type[_M], values: dict[str, Any], given: set[str]) -> _M:
    """A model from every field's value, already typed, as ``model_construct`` makes it, for less.

    Unvalidated: for values this library made or checked itself (the drain's
    statuses, a claimed entry that passed its integrity check).

    Args:
        cls: The model class.
        values: Every field's value, in the declared order.
        given: The fields set explicitly (``model_fields_set``).
    """
    made = _new(cls)
    _set(made, "__dict__", values)
    _set(made, "__pydantic_fields_set__", given)
    _set(made, "__pydantic_extra__", None)
    _set(made, "__pydantic_private__", None)
    return made


def made_event(at: dt.datetime, event: str, note: str | None = None, times: int = 1) -> StatusEvent:
    """``StatusEvent.model_construct(...)`` for a fraction of its cost (unvalidated).

    Args:
        at: An aware UTC time.
        event: What happened.
        note: Its note, if any.
        times: How many times in a row.
    """
    given = {"at", "event"}
    if note is not None:
        given.add("note")
    if times != 1:
        given.add("times")
    return constructed(StatusEvent, {"at": at, "event": event, "note": note, "times": times}, given)


def as_json(generated: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Generated values as a status holds them: JSON values, the same in every store."""
    return {
        step: {name: to_jsonable_python(value) for name, value in values.items()}
        for step, values in generated.items()
    }
