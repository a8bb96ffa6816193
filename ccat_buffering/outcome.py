"""What became of each transaction of a batch applied to the main database."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ccat_buffering.lsn import LSN
from ccat_buffering.retry import FailureKind

__all__ = ["BatchResult", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    """What became of one transaction in a batch.

    An outcome with neither ``applied``, ``already_applied`` nor ``error`` is
    :attr:`waiting`: the transaction was not applied because one before it
    in the batch failed and holds the queue (see
    :attr:`~ccat_buffering.retry.FailureKind.holds_the_queue`).

    Attributes:
        transaction_id: The transaction.
        applied: Its steps were applied in this batch.
        already_applied: The ledger showed it applied before; nothing was done.
        error: Why it failed, if it did (its savepoint was rolled back).
        kind: Whose fault the failure was.
        generated: What the database computed for the transaction's creates
            (identity keys, server defaults), by step id then field, read back
            by ``RETURNING`` in the statement that inserted the row.
    """

    transaction_id: str
    applied: bool = False
    already_applied: bool = False
    error: BaseException | None = None
    kind: FailureKind | None = None
    generated: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Whether the database now holds the transaction's effect."""
        return self.applied or self.already_applied

    @property
    def waiting(self) -> bool:
        """Whether it was left unapplied behind an earlier failure, to go back in order."""
        return not self.done and self.error is None

    @property
    def holds(self) -> bool:
        """Whether it failed in a way that keeps everything after it from applying first."""
        return self.error is not None and (self.kind is None or self.kind.holds_the_queue)


@dataclass(frozen=True)
class BatchResult:
    """What one batch did.

    Attributes:
        outcomes: One per transaction, in the order given.
        commit_lsn: The WAL position after the batch's commit (PostgreSQL
            only; ``None`` elsewhere or when nothing was written).
    """

    outcomes: list[Outcome]
    commit_lsn: LSN | None
