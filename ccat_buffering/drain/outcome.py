"""What became of each transaction of a batch applied to the main database."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.conflicts.kinds import Conflict
from ccat_buffering.write.lsn import LSN

__all__ = ["BatchResult", "Outcome", "plain_outcome"]


@dataclass(frozen=True)
class Outcome:
    """What became of one transaction in a batch.

    An outcome with neither ``applied``, ``already_applied``, ``error`` nor
    ``conflicted`` is :attr:`waiting`: the transaction was not applied because
    one before it in the batch failed and holds the queue (see
    :attr:`~ccat_buffering.buffer.retry.FailureKind.holds_the_queue`). A conflicted
    one is not waiting and holds nothing: it left the queue for the conflict
    log, and what follows it goes on (unless it depends on it, see
    :mod:`ccat_buffering.conflicts.holds`).

    Attributes:
        transaction_id: The transaction.
        applied: Its steps were applied in this batch.
        already_applied: The ledger showed it applied before; nothing was done.
        error: Why it failed, if it did (its savepoint was rolled back).
        kind: Whose fault the failure was.
        generated: What the database computed for the transaction's creates
            (identity keys, server defaults), by step id then field, read back
            by ``RETURNING`` in the statement that inserted the row.
        conflicted: A conflict was rejected: nothing of it was applied, and
            it waits for an operator (the conflict log holds it).
        conflicts: The conflicts it met, decided or rejected.
    """

    transaction_id: str
    applied: bool = False
    already_applied: bool = False
    error: BaseException | None = None
    kind: FailureKind | None = None
    generated: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    conflicted: bool = False
    conflicts: tuple[Conflict, ...] = ()

    @property
    def done(self) -> bool:
        """Whether the database now holds the transaction's effect."""
        return self.applied or self.already_applied

    @property
    def waiting(self) -> bool:
        """Whether it was left unapplied behind an earlier failure, to go back in order."""
        return not self.done and self.error is None and not self.conflicted

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
        all_done: Every outcome is done (applied, or a repeat's already
            applied) with nothing else to tell: no error, conflict or
            generated value. ``False`` says nothing (look at the outcomes).
    """

    outcomes: list[Outcome]
    commit_lsn: LSN | None
    all_done: bool = False


_PLAIN = {
    False: dict(Outcome("").__dict__),
    True: dict(Outcome("", applied=True).__dict__),
}


def plain_outcome(transaction_id: str, applied: bool) -> Outcome:
    """``Outcome(transaction_id, applied=applied)``, built without its per-field setattr.

    Made twice per transaction of every batch (waiting until the batch
    answers, then applied), where a frozen dataclass's ``__init__`` sets each
    of its eight fields through ``object.__setattr__``.
    """
    outcome = object.__new__(Outcome)
    values = outcome.__dict__
    values.update(_PLAIN[applied])
    values["transaction_id"] = transaction_id
    values["generated"] = {}
    return outcome
