"""What a caller who is not authenticated may see of a site and its transactions.

The library's HTTP routes (:func:`ccat_buffering.web.fastapi.health_router`) show
these reduced views unless the service hands them its own auth dependency:
no row data (a database error quotes the row: ``Key (ssn)=(...) already
exists``), no credentials, host names, ports, file paths or process ids. An
error is reduced to its kind; a transaction keeps its own fields.
"""

from __future__ import annotations

import re
from typing import Any

from ccat_buffering.errors import (
    BackendFullError,
    BackendUnavailableError,
    BufferingError,
    DatabaseUnavailableError,
)
from ccat_buffering.observe.health import Health
from ccat_buffering.write.status import TransactionStatus

__all__ = ["error_kind", "public_error", "public_health", "public_status", "warning_kind"]

_KIND = re.compile(r"[A-Za-z_][\w.]*")

# Health's warnings by what they start with or say, most specific first; the
# kind is a fixed text, so nothing of the warning's own text goes out.
_WARNING_KINDS = (
    ("processor paused", "processor paused"),
    ("the lease is held by a worker that is gone", "lease held by a worker that is gone"),
    ("no processor holds the lease", "no processor holds the lease"),
    ("transaction(s) in the dead-letter queue", "dead letters"),
    ("unresolved conflict(s)", "unresolved conflicts"),
    ("replication lagging", "replication lagging"),
    ("replica is not replaying", "replica not replaying WAL"),
    ("replica unreachable", "replica unreachable"),
    ("could not check the buffer against the main database", "buffer-loss check failed"),
    ("the buffer lost state", "buffer lost state"),
    ("key(s) without a TTL", "keys without a TTL"),
    ("maxmemory-policy", "buffer eviction policy"),
    ("appendonly", "buffer persistence"),
    ("out of memory", "buffer full"),
    ("full (", "buffer full"),
)


def error_kind(message: str | None) -> str | None:
    """The kind of a recorded error (``"IntegrityError: ..."`` -> ``"IntegrityError"``).

    Args:
        message: An error as statuses and dead letters record it
            (``<ErrorType>: <message>``), or ``None``.

    Returns:
        Its type's name, ``"error"`` when it names none, or ``None`` for no error.
    """
    if message is None:
        return None
    head = message.split(":", 1)[0].strip()
    match = _KIND.fullmatch(head)
    return head.rsplit(".", 1)[-1] if match else "error"


def warning_kind(warning: str) -> str:
    """A health warning as its kind, a fixed text (``"processor paused"``, ``"dead letters"``).

    Args:
        warning: A warning of :class:`~ccat_buffering.Health`.

    Returns:
        Its kind; ``"other"`` for one this module does not know.
    """
    for marker, kind in _WARNING_KINDS:
        if marker in warning:
            return kind
    return "other"


def public_status(status: TransactionStatus) -> dict[str, Any]:
    """A transaction's status with its error reduced to the error's kind.

    Args:
        status: The status.

    Returns:
        JSON data: every field of the status, ``last_error`` and the note of
        each event of its history as their kind.
    """
    data = status.model_dump(mode="json")
    data["last_error"] = error_kind(status.last_error)
    for event, step in zip(data.get("history", []), status.history, strict=True):
        event["note"] = error_kind(step.note)
    return data


def public_health(health: Health) -> dict[str, Any]:
    """The part of a site's health a probe needs: healthy or not, the counts, the states.

    No URLs, host names, user names, paths, lease holders or operators'
    actions; each warning as its kind (:func:`warning_kind`), since its text
    names hosts and files.

    Args:
        health: The full health.

    Returns:
        JSON data.
    """
    buffer = health.buffer
    return {
        "site": health.site,
        "site_type": health.site_type,
        "checked_at": health.checked_at.isoformat(),
        "healthy": health.healthy,
        "buffer": {
            "depth": buffer.depth,
            "in_flight": buffer.in_flight,
            "dead_letters": buffer.dead_letters,
            "oldest_waiting_seconds": buffer.oldest_waiting_seconds,
        },
        "states": health.states,
        "conflicts": health.conflicts,
        # Whether a worker drains, not which (its holder names a host and a pid).
        "processor": {
            "state": str(health.processor.state),
            "lease_held": health.processor.lease_holder is not None,
        },
        "replication": {
            "pending": health.replication.pending,
            "lagging": health.replication.lagging,
        },
        "warnings": [warning_kind(warning) for warning in health.warnings],
        "notices": health.notices,  # fixed texts on the site's set-up: no hosts
    }


def public_error(exc: BufferingError) -> str:
    """What an unavailable service says without naming its hosts: the kind of outage.

    Args:
        exc: The error (its full, masked text goes to the service's log).

    Returns:
        A message that names no host, port, path or data.
    """
    if isinstance(exc, BackendFullError):
        return (
            "the site's buffer is full and refuses new writes; nothing of this write was "
            "stored: submit again once it has drained"
        )
    if isinstance(exc, BackendUnavailableError):
        return (
            "the site's buffer cannot be reached; the write may or may not have been stored: "
            "submitting the same transaction again is safe"
        )
    if isinstance(exc, DatabaseUnavailableError):
        return "the database cannot be reached: try again later"
    return f"the site's buffer failed ({type(exc).__name__}): try again later"
