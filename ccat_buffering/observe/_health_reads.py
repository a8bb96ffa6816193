"""The reads a site's health is put together from, each bounded in time.

:func:`ccat_buffering.observe.health.collect` runs them all at once, so ``status``
takes as long as the slowest read, not their sum; the reads that cross a link
(the main database's memory of the buffer, the replica) get
:data:`WATCH_TIMEOUT` seconds and then say "no answer in 3 s" instead of
holding the answer up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from ccat_buffering.buffer.protocols import (
    AuditProgress,
    Backend,
    MemoryReport,
    SupportsBufferHealth,
    SupportsKeyAudit,
)
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.masking import mask_text
from ccat_buffering.observe._loss_look import look
from ccat_buffering.observe.buffer_loss import BufferWatch
from ccat_buffering.write.models import TransactionState, utc_now

__all__ = [
    "WATCH_TIMEOUT",
    "bounded",
    "buffer_warnings",
    "key_warnings",
    "memory",
    "oldest_waiting",
]

WATCH_TIMEOUT = 3.0
"""Seconds ``status`` waits for the main database's memory of the buffer (and the replica)."""

T = TypeVar("T")


async def oldest_waiting(backend: Backend) -> float | None:
    """Seconds the oldest unfinished transaction has waited (``None``: none waits)."""

    async def first(state: TransactionState) -> list[dt.datetime]:
        ids = await backend.status.ids(state, limit=1)
        return [s.created_at for s in await backend.status.get_many(ids) if s is not None]

    waiting = (TransactionState.BUFFERED, TransactionState.RETRYING, TransactionState.PROCESSING)
    found = [at for ats in await asyncio.gather(*map(first, waiting)) for at in ats]
    if not found:
        return None
    return max((utc_now() - min(found)).total_seconds(), 0.0)


async def bounded(work: Awaitable[T], seconds: float) -> T:
    """``work``'s result, or :class:`TimeoutError` when it gives none in ``seconds``.

    The time is told by the clock, not by the error the work ends with: a
    driver cancelled inside a statement may raise its own error in place of
    the cancellation (SQLAlchemy's "Can't reconnect until invalid transaction
    is rolled back"), which was once reported as the check's failure. Work
    left unfinished is cancelled and not waited for.
    """
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()  # the caller gave up: so does its work
        raise
    if not done:
        task.cancel()
        _ABANDONED.add(task)
        task.add_done_callback(_forget)
        raise TimeoutError(f"no answer in {seconds:g} s")
    return task.result()


_ABANDONED: set[asyncio.Future[Any]] = set()


def _forget(task: asyncio.Future[Any]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned check's error is not logged as unhandled


async def buffer_warnings(
    settings: BufferingSettings, backend: Backend, watch: BufferWatch | None
) -> list[str]:
    """The store's own warnings (policy, persistence, memory) and any loss of its state."""
    if settings.site_type != "secondary":
        return []
    own = backend.buffer_warnings() if isinstance(backend, SupportsBufferHealth) else _none()
    if watch is None:
        return await own
    warnings, lost = await asyncio.gather(own, _loss_warnings(watch))
    return warnings + lost


async def _none() -> list[str]:
    return []


async def _loss_warnings(watch: BufferWatch) -> list[str]:
    try:
        # The main database may be far away or unreachable (a link outage):
        # the look at it must not hold up the answer.
        losses = await bounded(look(watch), WATCH_TIMEOUT)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return [
            "could not check the buffer against the main database for lost state: "
            + mask_text(str(exc))
        ]
    return [loss.describe() for loss in losses]


async def key_warnings(
    settings: BufferingSettings, backend: Backend, audit: bool, progress: AuditProgress | None
) -> list[str]:
    """The persistence warning of a store without buffer health, and the audit's leaks."""
    warnings: list[str] = []
    if not isinstance(backend, SupportsKeyAudit):
        return warnings
    if settings.site_type == "secondary" and not isinstance(backend, SupportsBufferHealth):
        problem = await backend.persistence_warning()
        if problem:
            warnings.append(problem)
    if audit:
        leaks = await backend.audit_keys(progress) if progress else await backend.audit_keys()
        if leaks:
            warnings.append(f"{len(leaks)} key(s) without a TTL: see `ccat-buffering keys audit`")
    return warnings


async def memory(backend: Backend) -> MemoryReport | None:
    """The store's memory report, where it gives one."""
    return await backend.memory_report() if isinstance(backend, SupportsBufferHealth) else None
