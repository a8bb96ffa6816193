"""What a process marked committed, kept until its replication tracker confirms it.

The worker runs the processor and the replication tracker side by side: the
tracker would otherwise read back, and decode, every status the processor
had just written (a fifth of the drain's CPU with the other reads, issue
#23). The tracker still lists the pending ids from the store (the persisted
set, which survives a restart and a change of lease holder) and reads only
the statuses this process did not write. A committed status changes only
when it is confirmed, so a remembered one is the stored one; a few batches
are kept, so one confirmed by another process meanwhile is soon forgotten.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from ccat_buffering.write.models import TransactionStatus

__all__ = ["KEEP", "RecentCommits"]

KEEP = 10_000
"""Committed statuses remembered at most (a few batches)."""


class RecentCommits:
    """Committed statuses by id, oldest first; off until a tracker turns it on."""

    def __init__(self) -> None:
        self.enabled = False
        self._statuses: dict[str, TransactionStatus] = {}

    def remember(self, statuses: Iterable[TransactionStatus]) -> None:
        """Keep ``statuses`` (just written ``committed``); the oldest past :data:`KEEP` go."""
        if not self.enabled:
            return
        kept = self._statuses
        for status in statuses:
            kept[status.transaction_id] = status
        excess = len(kept) - KEEP
        if excess > 0:
            for transaction_id in list(itertools.islice(kept, excess)):
                del kept[transaction_id]

    def recall(self, ids: Sequence[str]) -> list[TransactionStatus | None]:
        """The remembered status of each id, or ``None``."""
        kept = self._statuses
        return [kept.get(i) for i in ids]

    def holds(self, status: TransactionStatus) -> bool:
        """Whether ``status`` is routine and the one remembered: stored as it is, unchanged.

        Routine: no history, no error, nothing generated (see
        :class:`~ccat_buffering.buffer.protocols.SupportsReplicatedMoves`).
        """
        values = status.__dict__
        return (
            self._statuses.get(values["transaction_id"]) is status
            and not values["history"]
            and values["last_error"] is None
            and not values["generated"]
        )

    def forget(self, ids: Iterable[str]) -> None:
        """Drop the statuses of ``ids`` (confirmed)."""
        for transaction_id in ids:
            self._statuses.pop(transaction_id, None)
