"""Stopping background tasks within a bounded time, whatever they are waiting on.

A task cancelled inside a database or Redis call does not always see its
``CancelledError``: a driver's clean-up may raise another error in its place
(SQLAlchemy's ``PendingRollbackError`` from a rollback listener, say), which a
loop that survives errors catches and carries on. So every loop of the
library re-raises the cancellation itself (:func:`raise_if_cancelling`), and
:func:`finish_or_cancel` cancels again until the task is done or its bound
has passed: a site always stops.
"""

from __future__ import annotations

import asyncio

from ccat_buffering.logs import SiteLogger

__all__ = ["CANCEL_BOUND", "finish_or_cancel", "raise_if_cancelling"]

CANCEL_BOUND = 2.0
"""Seconds a cancelled task gets to finish its clean-up before it is left behind."""

_RECANCEL_EVERY = 0.05


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the running task has been asked to cancel.

    Called by a loop that just caught an error: a cancellation that a driver
    turned into another error is still a cancellation.

    Raises:
        asyncio.CancelledError: The current task is being cancelled.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def finish_or_cancel(
    task: asyncio.Task[None],
    *,
    grace: float = 0.0,
    bound: float = CANCEL_BOUND,
    log: SiteLogger | None = None,
) -> bool:
    """Let ``task`` finish for ``grace`` s, then cancel it until it is done or ``bound`` passes.

    Args:
        task: The task to stop.
        grace: Seconds it may take to finish by itself (after it was asked to).
        bound: Seconds it may take once cancelled.
        log: Where to say that a task was left behind.

    Returns:
        Whether the task is done. A task still running after ``bound`` is left
        behind (it cannot hold the caller: the loop's end closes it).

    Raises:
        Exception: What the task raised, other than its cancellation.
    """
    if grace > 0 and not task.done():
        await asyncio.wait({task}, timeout=grace)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not task.done() and (left := deadline - loop.time()) > 0:
        # Cancel again and again: a driver's clean-up may have swallowed the last one.
        task.cancel()
        await asyncio.wait({task}, timeout=min(_RECANCEL_EVERY, left))
    if not task.done():
        if log is not None:
            log.error("task %s did not stop within %g s of being cancelled", task.get_name(), bound)
        return False
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error
    return True
