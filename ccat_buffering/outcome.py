"""What became of each transaction of a batch applied to the main database."""

from __future__ import annotations

from dataclasses import dataclass

from ccat_buffering.conflicts.kinds import Conflict
from ccat_buffering.lsn import LSN
from ccat_buffering.retry import FailureKind

__all__ = ["BatchResult", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    """What became of one transaction in a batch.

    Attributes:
        transaction_id: The transaction.
        applied: Its steps were applied in this batch.
        already_applied: The ledger showed it applied before; nothing was done.
        error: Why it failed, if it did (its savepoint was rolled back).
        kind: Whose fault the failure was.
        conflicted: A conflict was rejected: nothing of it was applied, and
            it waits for an operator (the conflict log holds it).
        conflicts: The conflicts it met, decided or rejected.
    """

    transaction_id: str
    applied: bool = False
    already_applied: bool = False
    error: BaseException | None = None
    kind: FailureKind | None = None
    conflicted: bool = False
    conflicts: tuple[Conflict, ...] = ()

    @property
    def done(self) -> bool:
        """Whether the database now holds the transaction's effect."""
        return self.applied or self.already_applied


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
