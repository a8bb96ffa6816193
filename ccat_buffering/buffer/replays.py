"""Replays that keep order: which letters go back, in what order, and what they would do.

A replayed letter goes back to the **head** of the queue (it was buffered
before everything that waits now), and the letters replayed together keep
their **original buffer order**: the order of the transactions' creation
(``created_at``, taken when the service built them), ties broken by the order
in which they were dead-lettered. A transaction's **dependents** among the
dead letters go back with it: a later letter that writes a record the chosen
one writes, or names (as a value) a record the chosen one creates, and so on,
transitively. Unreadable letters go back as they are, after the readable ones.

:func:`rehearse` applies letters at the main database inside one transaction
that is rolled back, each in a savepoint after the ones before it (so that a
dependent sees the create it needs), and reports per letter what would
happen: applied, already applied (the ledger holds it), or the error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ccat_buffering.buffer.cache_writes import cache_writes
from ccat_buffering.buffer.protocols import CacheKind, DeadLetter
from ccat_buffering.buffer.retry import describe_error
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.write.models import Transaction

if TYPE_CHECKING:
    from ccat_buffering.drain.executor import TransactionExecutor

__all__ = ["LetterRehearsal", "read_letter", "rehearse", "replay_set"]

_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


def read_letter(letter: DeadLetter) -> Transaction | None:
    """The letter's transaction, or ``None`` when the payload is not a readable one."""
    try:
        return Transaction.from_json(letter.payload)
    except TransactionValidationError:
        return None


def _values(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _values(item)
    elif value is not None:
        yield str(value)


def _touches(tx: Transaction) -> tuple[set[tuple[str, str]], set[str], set[str]]:
    """Records written, ids created, and every value the steps carry."""
    writes = cache_writes(tx)
    written = {(w.model, w.record_id) for w in writes}
    created = {w.record_id for w in writes if w.kind is CacheKind.CREATE}
    values: set[str] = set()
    for step in tx.steps:
        for record in [step.data, step.key, *(step.records or [])]:
            values.update(_values(record or {}))
    return written, created, values


def replay_set(letters: Sequence[DeadLetter], wanted: Iterable[str] | None) -> list[DeadLetter]:
    """The letters to replay for ``wanted``, with their dependents, in original buffer order.

    Args:
        letters: Every dead letter of the site, in arrival order.
        wanted: Letter ids chosen; ``None`` for all (unknown ids are ignored).

    Returns:
        The letters to replay, the one to be claimed first first.
    """
    arrival = {letter.letter_id: n for n, letter in enumerate(letters)}
    readable = {letter.letter_id: read_letter(letter) for letter in letters}

    def order(letter: DeadLetter) -> tuple[int, dt.datetime, int]:
        tx = readable[letter.letter_id]
        return (tx is None, tx.created_at if tx else _NEVER, arrival[letter.letter_id])

    ordered = sorted(letters, key=order)
    if wanted is None:
        return ordered
    chosen = set(wanted)
    written: set[tuple[str, str]] = set()
    created: set[str] = set()
    picked: list[DeadLetter] = []
    for letter in ordered:
        tx = readable[letter.letter_id]
        if tx is None:
            if letter.letter_id in chosen:
                picked.append(letter)
            continue
        mine, makes, values = _touches(tx)
        if letter.letter_id in chosen or mine & written or values & created:
            picked.append(letter)
            written |= mine
            created |= makes
    return picked


@dataclass(frozen=True)
class LetterRehearsal:
    """What replaying one letter would do at the main database now.

    Attributes:
        letter_id: The letter.
        outcome: ``applies``, ``already applied`` (the ledger holds it),
            ``conflicts`` (it meets another party's row and its policy rejects
            it: it would be held as ``conflicted``) or ``fails``.
        error: Why it would fail, as the database said it, or the conflicts it meets.
    """

    letter_id: str
    outcome: str
    error: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        """JSON-ready."""
        return {"letter_id": self.letter_id, "outcome": self.outcome, "error": self.error}


async def rehearse(
    executor: TransactionExecutor, letters: Sequence[DeadLetter]
) -> list[LetterRehearsal]:
    """What replaying ``letters`` in this order would do, without changing the main database.

    Args:
        executor: The main database's executor.
        letters: From :func:`replay_set`.

    Returns:
        One report per letter, in order.

    Raises:
        DatabaseUnavailableError: The main database could not be reached.
    """
    readable = [(letter, read_letter(letter)) for letter in letters]
    outcomes = iter(await executor.rehearse([tx for _, tx in readable if tx is not None]))
    reports = []
    for letter, tx in readable:
        if tx is None:
            reports.append(LetterRehearsal(letter.letter_id, "fails", "unreadable entry"))
            continue
        outcome = next(outcomes)
        if outcome.already_applied:
            reports.append(LetterRehearsal(letter.letter_id, "already applied"))
        elif outcome.error is not None:
            reports.append(
                LetterRehearsal(letter.letter_id, "fails", describe_error(outcome.error))
            )
        elif outcome.conflicted:
            conflicts = "; ".join(c.describe() for c in outcome.conflicts)
            reports.append(LetterRehearsal(letter.letter_id, "conflicts", conflicts or None))
        else:
            reports.append(LetterRehearsal(letter.letter_id, "applies"))
    return reports
