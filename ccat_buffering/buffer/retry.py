"""How long to wait before trying again, and whose fault a failure was.

Two different clocks run when a transaction fails to apply:

* an **outage** (the database cannot be reached) is nobody's fault: the whole
  queue pauses with capped exponential backoff and no attempt is counted, so
  a week without a link puts nothing in the dead letters;
* a **data error** (a constraint, a bad value) belongs to the transaction: it
  is retried in place under a :class:`RetryPolicy` and dead-lettered when its
  attempts run out; errors that can never succeed are dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import enum
import random
from dataclasses import dataclass, field

from ccat_buffering.errors import (
    BackendUnavailableError,
    ConfigurationError,
    DatabaseUnavailableError,
    TransactionValidationError,
)
from ccat_buffering.masking import mask_text

__all__ = ["FailureKind", "RetryPolicy", "classify_failure", "describe_error", "is_schema_lag"]


class FailureKind(enum.StrEnum):
    """Whose fault a failure is, which decides what happens next."""

    OUTAGE = "outage"
    """Not the transaction's fault (the link, the server, the schema): pause, count nothing."""
    CONFLICT = "conflict"
    """Serialization failure or deadlock: try again soon, count separately."""
    DATA = "data"
    """The transaction's data was refused: retry under the policy, then dead-letter."""
    PERMANENT = "permanent"
    """It can never apply (invalid, unknown model or column): dead-letter at once."""

    @property
    def holds_the_queue(self) -> bool:
        """Whether nothing after the failed transaction may apply until it is settled.

        A transaction that will be tried again keeps its place: later ones
        may depend on it (a foreign key, the same row), so they wait behind
        it, in the batch and in the buffer. One dead-lettered at once never
        applies, so the queue can go past it without reordering anything.
        """
        return self is not FailureKind.PERMANENT


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter and a cap.

    The delay before retry ``n`` (counting from 1) is drawn uniformly from
    ``[0, min(max_delay, base_delay * 2 ** (n - 1))]``.

    Args:
        max_attempts: Attempts before a data error is dead-lettered (origin: 3).
        base_delay: Seconds; the first retry waits up to this long (origin: 5).
        max_delay: Seconds; no wait is longer.
        rng: Source of jitter; inject a seeded one for repeatable tests.
    """

    max_attempts: int = 3
    base_delay: float = 5.0
    max_delay: float = 300.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("base_delay and max_delay must not be negative")

    def ceiling(self, attempt: int) -> float:
        """The largest delay before retry number ``attempt`` (1 for the first).

        Args:
            attempt: Failed attempts so far.

        Returns:
            Seconds.
        """
        exponent = min(max(attempt - 1, 0), 62)
        return float(min(self.max_delay, self.base_delay * 2**exponent))

    def delay(self, attempt: int) -> float:
        """A jittered delay before retry number ``attempt``.

        Args:
            attempt: Failed attempts so far.

        Returns:
            Seconds, between 0 and :meth:`ceiling`.
        """
        return self.rng.uniform(0.0, self.ceiling(attempt))

    def exhausted(self, attempts: int) -> bool:
        """Whether ``attempts`` failed attempts leave none to try.

        Args:
            attempts: Failed attempts so far.
        """
        return attempts >= self.max_attempts


_OUTAGE_SQLSTATES = {
    "08000",  # connection_exception
    "08001",  # sqlclient_unable_to_establish_sqlconnection
    "08003",  # connection_does_not_exist
    "08004",  # sqlserver_rejected_establishment_of_sqlconnection
    "08006",  # connection_failure
    "08007",  # transaction_resolution_unknown
    "25006",  # read_only_sql_transaction: the main database is a standby for now
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
    "57014",  # query_canceled: our statement_timeout, the link or server too slow
    "25P03",  # idle_in_transaction_session_timeout: the session was ended
}
_CONFLICT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available: another session (a stalled worker) holds the rows
}
_SCHEMA_SQLSTATES = {
    "42P01",  # undefined_table
    "42703",  # undefined_column
    "42704",  # undefined_object (an enum type, for one)
    "3F000",  # invalid_schema_name
}
_SCHEMA_MESSAGES = ("no such table", "has no column named", "no such column")


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        if candidate is None:
            continue
        for attribute in ("sqlstate", "pgcode"):
            code = getattr(candidate, attribute, None)
            if isinstance(code, str) and code:
                return code
    return None


def is_schema_lag(exc: BaseException) -> bool:
    """Whether ``exc`` says the database lacks a table, column or type of the schema.

    That is a migration not yet deployed on the main database, not bad data:
    the queue pauses until it is.

    Args:
        exc: What applying a transaction raised.
    """
    if _sqlstate(exc) in _SCHEMA_SQLSTATES:
        return True
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(message in text for message in _SCHEMA_MESSAGES)


def classify_failure(exc: BaseException) -> FailureKind:
    """Decide whose fault ``exc`` is.

    Args:
        exc: What applying a transaction raised.

    Returns:
        The kind of failure.
    """
    if isinstance(exc, DatabaseUnavailableError | BackendUnavailableError | ConfigurationError):
        return FailureKind.OUTAGE
    if isinstance(exc, TransactionValidationError):
        return FailureKind.PERMANENT
    if isinstance(exc, ConnectionError | TimeoutError | asyncio.TimeoutError | OSError):
        return FailureKind.OUTAGE
    from sqlalchemy import exc as sa_exc

    if is_schema_lag(exc):
        return FailureKind.OUTAGE
    code = _sqlstate(exc)
    if code is not None:
        if code in _OUTAGE_SQLSTATES or code.startswith("08"):
            return FailureKind.OUTAGE
        if code in _CONFLICT_SQLSTATES:
            return FailureKind.CONFLICT
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return FailureKind.OUTAGE
    if isinstance(exc, sa_exc.InterfaceError | sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return FailureKind.OUTAGE
    if isinstance(exc, sa_exc.OperationalError) and code is None:
        # A driver without SQLSTATEs (SQLite) reports an unreachable or locked
        # database this way; pausing loses nothing, dead-lettering would.
        return FailureKind.OUTAGE
    return FailureKind.DATA


def describe_error(exc: BaseException) -> str:
    """A one-line account of ``exc`` for statuses, dead letters and logs.

    A database error is shown as the driver's own message and the statement's
    first line, without SQLAlchemy's background link.

    Args:
        exc: The error.

    Returns:
        ``"<ErrorType>: <message>"``.
    """
    from sqlalchemy.exc import StatementError

    if isinstance(exc, StatementError) and exc.orig is not None:
        message = " ".join(str(exc.orig).split())
        statement = (exc.statement or "").strip().splitlines()
        where = f" [in: {statement[0][:120]}]" if statement else ""
        return mask_text(f"{type(exc.orig).__name__}: {message}{where}")
    return mask_text(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
