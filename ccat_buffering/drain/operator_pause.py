"""An operator's pause of a site's drain: stored with the buffer, audited, refused for nothing else.

``ccat-buffering pause`` (or the console) stops the site's drain, for a
migration of the main database for instance, without stopping the worker: the
pause is kept in the buffer's store (a backend with
:class:`~ccat_buffering.buffer.protocols.SupportsOperatorPause`), so that it holds
across a restart of the worker and every process of the site sees it. The
worker keeps its lease and finishes the batch in flight, then claims nothing
until ``ccat-buffering resume``; services keep buffering, and reads, status,
replays and purges work as before. ``status``, health and the metrics
(``ccat_buffering_operator_paused``) show it, with who paused, when and why.
"""

from __future__ import annotations

import datetime as dt
import time

from pydantic import BaseModel, ConfigDict

from ccat_buffering.buffer import audit
from ccat_buffering.buffer.protocols import Backend, SupportsOperatorPause
from ccat_buffering.errors import ConfigurationError
from ccat_buffering.masking import mask_text

__all__ = ["OperatorPause", "current", "pause", "resume"]


class OperatorPause(BaseModel):
    """A pause in force.

    Attributes:
        by: Who paused (an audit principal).
        at: When (seconds since the epoch).
        reason: Why, as the operator said.
    """

    model_config = ConfigDict(frozen=True)

    by: str
    at: float
    reason: str = ""

    @property
    def cause(self) -> str:
        """One line for status and health."""
        when = dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat(timespec="seconds")
        why = f": {self.reason}" if self.reason else ""
        return f"paused by operator {self.by} since {when.replace('+00:00', 'Z')}{why}"


def _store(backend: Backend) -> SupportsOperatorPause:
    if not isinstance(backend, SupportsOperatorPause):
        raise ConfigurationError(
            f"the {type(backend).__name__} cannot keep an operator's pause "
            "(it lacks SupportsOperatorPause); stop the worker instead"
        )
    return backend


async def current(backend: Backend) -> OperatorPause | None:
    """The pause in force at ``backend``'s site, or ``None`` (also for a store that has none)."""
    if not isinstance(backend, SupportsOperatorPause):
        return None
    note = await backend.operator_pause()
    if note is None:
        return None
    try:
        return OperatorPause.model_validate_json(note)
    except ValueError:
        # Unreadable, but there: paused all the same (resume clears it).
        return OperatorPause(by="?", at=0.0, reason=f"unreadable pause note {note[:80]!r}")


async def pause(
    backend: Backend, *, reason: str = "", principal: str | None = None
) -> OperatorPause:
    """Pause the site's drain (again, if it is: the note is replaced) and audit it.

    Args:
        backend: The site's stores.
        reason: Why, shown in status and the audit log.
        principal: Who; ``None``: this machine's user
            (:func:`~ccat_buffering.buffer.audit.operator`).

    Returns:
        The pause now in force.

    Raises:
        ConfigurationError: The backend cannot keep a pause.
    """
    store = _store(backend)
    note = OperatorPause(
        by=mask_text(principal or audit.operator()), at=time.time(), reason=mask_text(reason)
    )
    await store.set_operator_pause(note.model_dump_json())
    await audit.record(backend, action="drain.pause", count=1, principal=principal, detail=reason)
    return note


async def resume(backend: Backend, *, principal: str | None = None) -> OperatorPause | None:
    """Resume the site's drain and audit it.

    Returns:
        The pause that was in force, or ``None`` if there was none.

    Raises:
        ConfigurationError: The backend cannot keep a pause.
    """
    store = _store(backend)
    was = await current(backend)
    await store.set_operator_pause(None)
    detail = "" if was is None else f"was {was.cause}"
    await audit.record(
        backend,
        action="drain.resume",
        count=int(was is not None),
        principal=principal,
        detail=detail,
    )
    return was
