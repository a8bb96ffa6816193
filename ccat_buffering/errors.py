"""The one error tree of ccat-buffering.

Every error the library raises on purpose derives from :class:`BufferingError`;
backends translate their client's exceptions at their boundary, so nothing from
``redis.*`` or a database driver leaks through a protocol::

    BufferingError
    ├── ConfigurationError            settings, URLs, missing extras
    ├── TransactionValidationError    bad input: nothing was written (also a ValueError)
    │   ├── PayloadTooLargeError
    │   ├── UnknownModelError
    │   ├── UnknownColumnError
    │   └── IdempotencyKeyReusedError an idempotency key sent again with another request
    ├── BackendError                  the buffer, status or cache store failed
    │   ├── BackendUnavailableError   the store cannot be reached (an outage)
    │   │   └── WriteNotReplicatedError   too few replicas took a write: not acknowledged
    │   ├── BackendFullError          the store is out of memory: it refuses new writes
    │   ├── BufferLostError           the buffer lost state it held (restart, flush, failover)
    │   └── CorruptEntryError         an entry in the store is not a valid transaction
    ├── ExecutionError                applying a transaction to the database failed
    │   ├── DatabaseUnavailableError  the database cannot be reached (an outage)
    │   ├── LedgerHorizonError        created before the pruned ledger's horizon: not applied
    │   ├── RecordNotFoundError       an update or delete found no row
    │   ├── ConflictError             a write met another party's write and was rejected
    │   └── UnresolvedReferenceError  a ref() named a value the step did not produce
    ├── LeaseLostError                another processor holds the site's lease
    ├── ReplicationError              the replica cannot answer for a commit
    └── WaitError                     a wait for a transaction ended without its state
        ├── WaitTimeoutError          not reached in time (also a TimeoutError)
        ├── TransactionFailedError    the transaction was dead-lettered
        └── UnknownTransactionError   no status: never submitted, or expired (a LookupError)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ccat_buffering.masking import mask_text

if TYPE_CHECKING:
    from ccat_buffering.write.status import TransactionStatus

__all__ = [
    "BackendError",
    "BackendFullError",
    "BackendUnavailableError",
    "BufferLostError",
    "BufferingError",
    "ConfigurationError",
    "ConflictError",
    "CorruptEntryError",
    "DatabaseUnavailableError",
    "ExecutionError",
    "IdempotencyKeyReusedError",
    "LeaseLostError",
    "LedgerHorizonError",
    "PayloadTooLargeError",
    "RecordNotFoundError",
    "ReplicationError",
    "TransactionFailedError",
    "TransactionValidationError",
    "UnknownColumnError",
    "UnknownModelError",
    "UnknownTransactionError",
    "UnresolvedReferenceError",
    "WaitError",
    "WaitTimeoutError",
    "WriteNotReplicatedError",
]


class BufferingError(Exception):
    """Base of every error raised by ccat-buffering.

    Its text arguments are masked when it is made
    (:func:`ccat_buffering.masking.mask_text`): a password in a URL, a
    ``password=`` parameter or a driver's message never reaches a log, a
    status or an HTTP answer through an error, whoever formats it.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(mask_text(a) if isinstance(a, str) else a for a in args))


class ConfigurationError(BufferingError):
    """Settings, a URL or an installed extra do not allow what was asked."""


class TransactionValidationError(BufferingError, ValueError):
    """A transaction is not valid; nothing was written.

    Errors of this kind can never succeed on retry: a processor that meets one
    dead-letters the transaction at once.
    """


class PayloadTooLargeError(TransactionValidationError):
    """The serialised transaction is larger than the configured limit."""


class UnknownModelError(TransactionValidationError):
    """A step names a model that the model registry does not know."""


class UnknownColumnError(TransactionValidationError):
    """A step names a field that its model does not have."""


class BackendError(BufferingError):
    """A buffer, status or cache store failed."""


class BackendUnavailableError(BackendError):
    """The store cannot be reached; the caller may try again later."""


class WriteNotReplicatedError(BackendUnavailableError):
    """Fewer replicas than ``min_replicas`` acknowledged a write in time: it is not acknowledged.

    The write may or may not be buffered: the master took it, but a failover
    may drop it. Submitting the same transaction object again is safe (the
    ledger applies a transaction once). An outage of the replicas, so the
    caller may try again later, as for any :class:`BackendUnavailableError`.
    """


class BackendFullError(BackendError):
    """The store is full and refuses writes that need memory; nothing of the write was stored.

    The drain still works (acknowledging frees memory); the caller may submit
    again once the buffer has drained, or after the store's memory is raised.
    """


class BufferLostError(BackendError):
    """The buffer lost state it held: acknowledged writes may be gone.

    Raised (or reported) when the buffer's marker no longer matches what the
    main database remembers of it: a restart without persistence, a flush, a
    failover to a replica that was behind.
    """


class CorruptEntryError(BackendError):
    """An entry read from a store is not a valid transaction or status."""


class ExecutionError(BufferingError):
    """Applying a transaction to the database failed."""


class DatabaseUnavailableError(ExecutionError):
    """The database cannot be reached: an outage, not the transaction's fault."""


class LedgerHorizonError(ExecutionError):
    """A transaction was created before its site's pruned ledger horizon; it was not applied.

    The ledger no longer holds rows that old, so it cannot tell whether the
    transaction was applied before (a buffer restored from an old backup, for
    instance). It is dead-lettered instead of risking a second application;
    see :mod:`ccat_buffering.drain.ledger_pruning`.
    """


class RecordNotFoundError(ExecutionError):
    """An update or delete step found no row with the given key."""


class ConflictError(ExecutionError):
    """A write did not find the row it was made against, and its policy rejected it.

    Raised by a ``main`` site's ``submit``; a buffered transaction becomes
    ``conflicted`` instead. The conflict log holds base, mine and theirs.

    Attributes:
        conflicts: What was found (:class:`ccat_buffering.conflicts.Conflict`).
    """

    def __init__(self, message: str, conflicts: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class UnresolvedReferenceError(ExecutionError):
    """A ``ref()`` named a field that its step did not produce."""


class LeaseLostError(BufferingError):
    """The processor lease of the site is held by another processor."""


class ReplicationError(BufferingError):
    """The replica could not be asked where its replay stands."""


class IdempotencyKeyReusedError(TransactionValidationError):
    """An idempotency key came again with a different request: nothing was written."""


class WaitError(BufferingError):
    """A wait for a transaction ended without the state waited for.

    Attributes:
        status: The transaction's last known status (``None`` if none was seen).
    """

    def __init__(self, message: str, status: TransactionStatus | None = None) -> None:
        super().__init__(message)
        self.status = status


class WaitTimeoutError(WaitError, TimeoutError):
    """The transaction did not reach the state in time; ``status`` is where it stood."""


class TransactionFailedError(WaitError):
    """The transaction was dead-lettered: it will not reach the state unless replayed."""


class UnknownTransactionError(WaitError, LookupError):
    """No status: the transaction was never submitted here, or its status expired."""
