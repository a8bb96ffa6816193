"""The audit log: who did what to a site, how much of it, and when.

Every operator action that changes a site's state (``dlq replay``, ``dlq
purge``, ``status --acknowledge-loss``, and the console's actions) calls
:func:`record` once it is done; ``ccat-buffering audit`` and ``status`` show
the log (:func:`list`). It is kept in the buffer's store (a backend with
:class:`~ccat_buffering.buffer.protocols.SupportsAuditLog`: a capped list per site),
not in the main database, because operators act most while the link is down.
Each entry is also logged on the ``ccat_buffering.buffer.audit`` logger, so a store
without the capability still leaves a trace in the logs.

Who acted is a *principal*: ``os:<user>@<host>`` for a command run on a
machine (:func:`operator`), or whatever the calling service names, e.g.
``http:<user name>`` for a request its auth dependency authenticated.
"""

from __future__ import annotations

import builtins
import datetime as dt
import getpass
import logging
import socket
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from ccat_buffering.buffer.protocols import Backend, SupportsAuditLog
from ccat_buffering.masking import mask_text

__all__ = ["KEEP", "AuditEntry", "as_json", "list", "operator", "record"]

KEEP = 10_000
"""Entries kept per site; the oldest go first (the log is bounded like every site structure)."""

MAX_DETAIL = 2_000
"""Characters of ``detail`` kept; a longer one is cut and ends in ``…``."""

log = logging.getLogger(__name__)


class AuditEntry(BaseModel):
    """One operator action.

    Attributes:
        at: When it was done (seconds since the epoch, the recording machine's clock).
        principal: Who did it (``os:<user>@<host>`` or the service's name for a caller).
        action: What was done, e.g. ``dlq.replay``.
        count: How many items it touched (transactions, letters, losses).
        detail: Anything else worth keeping (ids, a reason); passwords masked.
    """

    model_config = ConfigDict(frozen=True)

    at: float
    principal: str
    action: str
    count: int
    detail: str = ""

    @property
    def when(self) -> str:
        """``at`` as ISO 8601 in UTC, to the second."""
        moment = dt.datetime.fromtimestamp(self.at, dt.UTC)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def operator() -> str:
    """The principal of a command run here: ``os:<OS user>@<host name>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        user = "?"
    return f"os:{user}@{socket.gethostname()}"


async def record(
    backend: Backend,
    *,
    action: str,
    count: int,
    principal: str | None = None,
    detail: str = "",
    keep: int = KEEP,
    clock: Callable[[], float] = time.time,
) -> AuditEntry:
    """Record an action in the site's audit log (and on the ``ccat_buffering.buffer.audit`` logger).

    Call it once the action is done, with what it actually touched.

    Args:
        backend: The site's stores.
        action: What was done: a short dotted name, e.g. ``dlq.purge``.
        count: How many items it touched.
        principal: Who did it; ``None``: :func:`operator` (this machine's user).
        detail: Anything else worth keeping; passwords are masked, and it is
            cut at :data:`MAX_DETAIL` characters.
        keep: Entries the log keeps; the oldest beyond it go.
        clock: Reads the time.

    Returns:
        The entry as recorded.

    Raises:
        ValueError: ``action`` is empty or ``count`` negative.
        BackendError: The store could not record it (the action is done).
    """
    if not action or not action.strip():
        raise ValueError("an audit entry needs an action")
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    detail = mask_text(detail)
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 1] + "…"
    entry = AuditEntry(
        at=clock(),
        principal=mask_text(principal or operator()),
        action=action.strip(),
        count=count,
        detail=detail,
    )
    log.info(
        "%s by %s: %d item(s)%s",
        entry.action,
        entry.principal,
        entry.count,
        f" ({entry.detail})" if entry.detail else "",
    )
    if isinstance(backend, SupportsAuditLog):
        await backend.append_audit(entry.model_dump_json(), keep)
    else:
        log.warning(
            "%s keeps no audit log: the action above is recorded in this log only",
            type(backend).__name__,
        )
    return entry


async def list(backend: Backend, limit: int | None = 50) -> builtins.list[AuditEntry]:
    """The site's audit log, newest first.

    Args:
        backend: The site's stores.
        limit: At most this many entries (``None``: every one kept).

    Returns:
        The entries; none for a backend without an audit log. An entry that
        cannot be read (written by hand) shows as the action ``unreadable``
        with its text as the detail.
    """
    if not isinstance(backend, SupportsAuditLog):
        return []
    entries: builtins.list[AuditEntry] = []
    for text in await backend.audit_entries(limit):
        try:
            entries.append(AuditEntry.model_validate_json(text))
        except ValueError:
            entries.append(
                AuditEntry(at=0.0, principal="?", action="unreadable", count=0, detail=text[:200])
            )
    return entries


def as_json(entry: AuditEntry) -> dict[str, object]:
    """An entry as JSON data, with ``when`` in ISO 8601 beside ``at``."""
    return {**entry.model_dump(mode="json"), "when": entry.when}
