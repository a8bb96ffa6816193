"""The argument checks every backend runs at its boundary, before it writes anything.

A backend calls the check of a protocol method first thing in that method
(and in the matching :class:`~ccat_buffering.buffer.protocols.WriteBatch` staging
call), so that every backend refuses the same arguments with the same error
and writes nothing of a refused call; the contract suite in
:mod:`ccat_buffering.testing` holds each backend to it. A third-party backend
runs them as the first-party ones do::

    from ccat_buffering.buffer import checks

    class MyBufferStore:
        async def push(self, payloads):
            checks.check_push(payloads)
            ...

What each kind of error means:

* :class:`TypeError`: an argument of the wrong type (bytes for text, one text
  where a sequence of texts is asked, a mapping for a status): a bug in the
  caller.
* :class:`ValueError`: a count or duration out of range (a negative or NaN
  TTL, ``claim(0, ...)``): a bug in the caller or its settings.
* :class:`~ccat_buffering.errors.TransactionValidationError` (also a
  ``ValueError``): text that no store can keep and give back as it was (a
  transaction id with a comma or a control character, a model name with
  ``:``): the transaction's own fault, so a processor dead-letters it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ccat_buffering.buffer.protocols import CacheKind, CacheWrite
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.write.identifiers import check_identifier
from ccat_buffering.write.status import TransactionStatus

__all__ = [
    "check_audit",
    "check_cache_extend",
    "check_cache_release",
    "check_cache_write",
    "check_claim",
    "check_dead_letter",
    "check_duration",
    "check_lease",
    "check_lease_holder",
    "check_letter_ids",
    "check_payload",
    "check_push",
    "check_receipts",
    "check_record_id",
    "check_report",
    "check_retry",
    "check_status",
    "check_status_put",
    "check_transaction_id",
    "check_writes",
]


# -- building blocks --------------------------------------------------------

_INFINITY = math.inf


def check_duration(value: float, what: str) -> None:
    """Refuse a duration that is not a finite number of seconds >= 0.

    Args:
        value: The duration.
        what: The argument's name, for the message.

    Raises:
        ValueError: With the offending value.
    """
    if type(value) is float and 0.0 <= value < _INFINITY:
        return  # the common case, in one comparison (NaN and infinity fail it)
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, not {value!r}")


def _check_texts(values: object, what: str) -> list[str]:
    # A bare str is a sequence of one-character strings: a caller's slip that
    # would otherwise act on each character.
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"{what} must be a sequence of texts, not {type(values).__name__}")
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"each of {what} must be text, not {type(value).__name__}")
    return list(values)


_KNOWN_NAMES: set[str] = set()
"""Model and field names already checked: they recur in every transaction."""
_KNOWN_LIMIT = 4096


def _check_name(name: str, what: str) -> None:
    if name in _KNOWN_NAMES:
        return
    check_identifier(name, what)
    if len(_KNOWN_NAMES) < _KNOWN_LIMIT:
        _KNOWN_NAMES.add(name)


_RECORD_ID = re.compile(r"[A-Za-z0-9_.,%-]{1,4096}")


def check_record_id(record_id: str) -> str:
    """Return ``record_id`` if it can name a cache entry (see ``cache_writes.key_text``).

    Raises:
        TransactionValidationError: Empty, over 4,096 characters, or holding a
            character other than letters, digits, ``_``, ``.``, ``,``, ``%``, ``-``.
    """
    if not isinstance(record_id, str) or _RECORD_ID.fullmatch(record_id) is None:
        shown = repr(record_id) if len(str(record_id)) <= 100 else f"{str(record_id)[:80]!r}..."
        raise TransactionValidationError(
            f"record id {shown} cannot name a cache entry: it must be 1 to 4,096 of "
            "letters, digits, '_', '.', ',', '%' and '-' (cache_writes.record_id encodes keys so; "
            "a key's text takes up to 9 of them a character)"
        )
    return record_id


_TRANSACTION_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_KINDS = frozenset(CacheKind)


def check_transaction_id(transaction_id: str) -> str:
    """Return ``transaction_id`` if it can name a status and cache entries.

    Raises:
        TransactionValidationError: It is not 1 to 128 letters, digits, ``_``,
            ``.`` and ``-`` (starting with neither of the last two); stores
            list a record's transactions with commas and frame them with
            control characters.
    """
    global _last_transaction_id
    if transaction_id is _last_transaction_id:
        return transaction_id  # this very text passed just now (a buffer() checks its id twice)
    if not isinstance(transaction_id, str) or not _TRANSACTION_ID.fullmatch(transaction_id):
        raise TransactionValidationError(
            f"transaction id {transaction_id!r} cannot name cache entries: use letters, "
            "digits, '_', '.' and '-' (a UUID does)"
        )
    _last_transaction_id = transaction_id
    return transaction_id


_last_transaction_id: object = object()
"""The id :func:`check_transaction_id` passed last (text is immutable: it passes again)."""


def check_writes(transaction_id: str, writes: Sequence[CacheWrite]) -> None:
    """Refuse cache writes that a store could not keep and give back as they were.

    The transaction id must pass :func:`check_transaction_id`; each write's
    model name, record id and field names must be plain identifiers (names
    that are not would escape the key schema, or could not be read back); its
    kind must be a :class:`~ccat_buffering.buffer.protocols.CacheKind`.

    Raises:
        TypeError: A write is not a :class:`~ccat_buffering.buffer.protocols.CacheWrite`.
        TransactionValidationError: Naming the offending value.
    """
    check_transaction_id(transaction_id)
    known = _KNOWN_NAMES
    for write in writes:
        if type(write) is not CacheWrite and not isinstance(write, CacheWrite):
            raise TypeError(f"each write must be a CacheWrite, not {type(write).__name__}")
        if write.model not in known:
            _check_name(write.model, "model name")
        check_record_id(write.record_id)
        if write.kind not in _KINDS:
            raise TransactionValidationError(
                f"cache write kind {write.kind!r} is not one of {', '.join(_KINDS)}"
            )
        # Names recur in every transaction: one C-level subset test for the
        # common case, the named check only when a name is new (or bad).
        if not known.issuperset(write.fields):
            for name in write.fields:
                _check_name(name, "field name")


def check_payload(payload: object) -> None:
    """Refuse a buffer entry that is not text.

    Raises:
        TypeError: Naming the type given.
    """
    if not isinstance(payload, str):
        raise TypeError(f"payload must be text, not {type(payload).__name__}")


def check_status(status: object) -> None:
    """Refuse a status that is not a :class:`TransactionStatus` a store can name.

    Raises:
        TypeError: Naming the type given.
        TransactionValidationError: Its transaction id fails :func:`check_transaction_id`.
    """
    if not isinstance(status, TransactionStatus):
        raise TypeError(f"status must be a TransactionStatus, not {type(status).__name__}")
    check_transaction_id(status.transaction_id)


# -- one check per protocol method ----------------------------------------


def check_push(payloads: Sequence[str]) -> list[str]:
    """Check :meth:`~ccat_buffering.buffer.protocols.BufferStore.push` (and ``WriteBatch.push``).

    Returns:
        The payloads, as a list.

    Raises:
        TypeError: ``payloads`` is one text rather than a sequence, or an entry is not text.
    """
    if isinstance(payloads, str | bytes) or not isinstance(payloads, Sequence):
        raise TypeError(f"payloads must be a sequence of texts, not {type(payloads).__name__}")
    for payload in payloads:
        check_payload(payload)
    return list(payloads)


def check_claim(count: int, lease_seconds: float) -> None:
    """Check :meth:`~ccat_buffering.buffer.protocols.BufferStore.claim`.

    Raises:
        ValueError: ``count`` is not a whole number >= 1, or the lease fails
            :func:`check_duration`.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be at least 1, not {count!r}")
    check_duration(lease_seconds, "lease_seconds")


def check_receipts(receipts: Sequence[str]) -> list[str]:
    """Check :meth:`~ccat_buffering.buffer.protocols.BufferStore.ack` (and ``WriteBatch.ack``).

    Returns:
        The receipts, as a list.

    Raises:
        TypeError: ``receipts`` is one text rather than a sequence, or a receipt is not text.
    """
    return _check_texts(receipts, "receipts")


def check_retry(receipts: Sequence[str], delay_seconds: float) -> list[str]:
    """Check :meth:`~ccat_buffering.buffer.protocols.BufferStore.retry_later`.

    Returns:
        The receipts, as a list.

    Raises:
        TypeError: As :func:`check_receipts`.
        ValueError: The delay fails :func:`check_duration`.
    """
    check_duration(delay_seconds, "delay_seconds")
    return check_receipts(receipts)


def check_dead_letter(receipt: str, reason: str, transaction_id: str | None) -> None:
    """Check :meth:`~ccat_buffering.buffer.protocols.BufferStore.dead_letter`.

    Raises:
        TypeError: The receipt or reason is not text, or the transaction id is
            neither text nor ``None``.
    """
    for what, value in (("receipt", receipt), ("reason", reason)):
        if not isinstance(value, str):
            raise TypeError(f"{what} must be text, not {type(value).__name__}")
    if transaction_id is not None and not isinstance(transaction_id, str):
        raise TypeError(f"transaction_id must be text or None, not {type(transaction_id).__name__}")


def check_letter_ids(letter_ids: Sequence[str] | None) -> list[str] | None:
    """Check :meth:`~ccat_buffering.buffer.protocols.DeadLetterStore.replay` and ``purge``.

    Returns:
        The ids as a list, or ``None`` (every letter).

    Raises:
        TypeError: ``letter_ids`` is one text rather than a sequence, or an id is not text.
    """
    return None if letter_ids is None else _check_texts(letter_ids, "letter_ids")


def check_status_put(status: TransactionStatus, ttl_seconds: float) -> None:
    """Check :meth:`~ccat_buffering.buffer.protocols.StatusStore.put` (and ``put_status``).

    Raises:
        TypeError: As :func:`check_status`.
        ValueError: The TTL fails :func:`check_duration`.
        TransactionValidationError: As :func:`check_status`.
    """
    check_status(status)
    check_duration(ttl_seconds, "ttl_seconds")


def check_cache_write(
    transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float
) -> list[CacheWrite]:
    """Check :meth:`~ccat_buffering.buffer.protocols.CacheStore.write` (and ``write_cache``).

    Returns:
        The writes, as a list.

    Raises:
        TypeError: ``writes`` is not a sequence of :class:`CacheWrite`.
        ValueError: The TTL fails :func:`check_duration`.
        TransactionValidationError: As :func:`check_writes`.
    """
    if not isinstance(writes, Sequence):
        raise TypeError(f"writes must be a sequence of CacheWrite, not {type(writes).__name__}")
    writes = list(writes)
    check_writes(transaction_id, writes)
    check_duration(ttl_seconds, "ttl_seconds")
    return writes


def check_cache_release(transaction_ids: Sequence[str]) -> list[str]:
    """Check :meth:`~ccat_buffering.buffer.protocols.CacheStore.release` (and ``release_cache``).

    Returns:
        The ids, as a list.

    Raises:
        TypeError: ``transaction_ids`` is one text rather than a sequence, or an id is not text.
        TransactionValidationError: An id fails :func:`check_transaction_id`.
    """
    ids = _check_texts(transaction_ids, "transaction_ids")
    for transaction_id in ids:
        check_transaction_id(transaction_id)
    return ids


def check_cache_extend(transaction_ids: Sequence[str], ttl_seconds: float) -> list[str]:
    """Check :meth:`~ccat_buffering.buffer.protocols.CacheStore.extend`.

    Returns:
        The ids, as a list.

    Raises:
        TypeError: As :func:`check_cache_release`.
        ValueError: The TTL fails :func:`check_duration`.
        TransactionValidationError: As :func:`check_cache_release`.
    """
    check_duration(ttl_seconds, "ttl_seconds")
    return check_cache_release(transaction_ids)


def check_lease_holder(holder: str) -> None:
    """Check :meth:`~ccat_buffering.buffer.protocols.ProcessorLease.release`.

    Raises:
        TypeError: The holder is not text.
        ValueError: The holder is empty.
    """
    if not isinstance(holder, str):
        raise TypeError(f"holder must be text, not {type(holder).__name__}")
    if not holder:
        raise ValueError("holder must not be empty: it names the processor that holds the lease")


def check_lease(holder: str, ttl_seconds: float) -> None:
    """Check :meth:`~ccat_buffering.buffer.protocols.ProcessorLease.acquire` and ``renew``.

    Raises:
        TypeError: As :func:`check_lease_holder`.
        ValueError: The holder is empty, or the TTL fails :func:`check_duration`.
    """
    check_lease_holder(holder)
    check_duration(ttl_seconds, "ttl_seconds")


def check_report(report: str, ttl_seconds: float) -> None:
    """Check :meth:`~ccat_buffering.buffer.protocols.SupportsProcessorReports.publish_report`.

    Raises:
        TypeError: The report is not text.
        ValueError: The TTL fails :func:`check_duration`.
    """
    if not isinstance(report, str):
        raise TypeError(f"report must be text (JSON), not {type(report).__name__}")
    check_duration(ttl_seconds, "ttl_seconds")


def check_pause_note(note: str | None) -> None:
    """Check :meth:`~ccat_buffering.buffer.protocols.SupportsOperatorPause.set_operator_pause`.

    Raises:
        TypeError: The note is neither text nor ``None``.
    """
    if note is not None and not isinstance(note, str):
        raise TypeError(f"a pause note must be text (JSON) or None, not {type(note).__name__}")


def check_audit(entry: str, keep: int) -> None:
    """Check :meth:`~ccat_buffering.buffer.protocols.SupportsAuditLog.append_audit`.

    Raises:
        TypeError: The entry is not text, or ``keep`` is not an integer.
        ValueError: ``keep`` is not positive.
    """
    if not isinstance(entry, str):
        raise TypeError(f"an audit entry must be text (JSON), not {type(entry).__name__}")
    if not isinstance(keep, int) or isinstance(keep, bool):
        raise TypeError(f"keep must be an integer, not {type(keep).__name__}")
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
