"""What a process did for its callers: submits, refusals and waits, counted.

Plain counters in the core (no metrics library): a service exposes them with
:func:`ccat_buffering.web.service_metrics.metrics_router`, read at each scrape.
The drain's own counters (commits, replications, dead letters) are the
worker's, in :mod:`ccat_buffering.web.metrics`, so that each event is counted by
exactly one process.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ccat_buffering.errors import (
    BackendError,
    DatabaseUnavailableError,
    ExecutionError,
    TransactionValidationError,
)

__all__ = ["Activity", "refusal_reason"]


def refusal_reason(exc: BaseException) -> str:
    """The label a refused submit is counted under.

    Args:
        exc: What ``submit`` raised.

    Returns:
        ``invalid`` (bad input), ``buffer_unavailable``, ``database_unavailable``,
        ``database_refused`` (a main site's database refused it) or ``other``.
    """
    if isinstance(exc, TransactionValidationError):
        return "invalid"
    if isinstance(exc, BackendError):
        return "buffer_unavailable"
    if isinstance(exc, DatabaseUnavailableError):
        return "database_unavailable"
    if isinstance(exc, ExecutionError):
        return "database_refused"
    return "other"


@dataclass
class Activity:
    """Counts of one process's calls on a site, since the process started.

    Attributes:
        submits: Accepted submits by the state they returned (``buffered``,
            ``committed``).
        refusals: Refused submits by :func:`refusal_reason`.
        replays: Submits answered from an idempotency key (no new transaction).
        waits: Finished waits by outcome (``committed``, ``replicated``,
            ``failed``, ``timeout``, ...).
        waiting: Waits in progress now.
    """

    submits: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    replays: int = 0
    waits: Counter[str] = field(default_factory=Counter)
    waiting: int = 0
