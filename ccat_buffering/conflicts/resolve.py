"""An operator's resolution of a conflict: keep mine (apply unchecked) or theirs (drop).

Either way the conflict log records it, and the transactions of the same site
that waited behind the resolved one are released in their buffer order: each
is applied as a drain would (with its base check; it may conflict in turn).
The site's statuses follow when the caller passes the site's status store.

This module imports the executor; nothing in the executor imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer.manager import as_json
from ccat_buffering.buffer.protocols import StatusStore
from ccat_buffering.conflicts.holds import Holds
from ccat_buffering.conflicts.kinds import ConflictOutcome
from ccat_buffering.conflicts.log import (
    ConflictRecord,
    get_conflict,
    mark_resolved,
    unresolved_payloads,
)
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.outcome import Outcome
from ccat_buffering.errors import ConflictError
from ccat_buffering.write.models import Transaction, TransactionState, utc_now
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["Resolution", "resolve_conflict"]

Keep = Literal["mine", "theirs"]


@dataclass
class Resolution:
    """What a resolution did.

    Attributes:
        conflict_id: The conflict resolved.
        transaction_id: Its transaction.
        keep: ``mine`` (applied without its base check) or ``theirs`` (dropped).
        released: Each transaction released behind it, in buffer order, with
            what became of it (``applied``, ``conflicted``, ``waiting``, ``failed: ...``).
    """

    conflict_id: int
    transaction_id: str
    keep: Keep
    released: list[tuple[str, str]] = field(default_factory=list)


def _fate(outcome: Outcome) -> str:
    if outcome.done:
        return "applied"
    if outcome.conflicted:
        waiting = any(c.outcome is ConflictOutcome.WAITING for c in outcome.conflicts)
        return "waiting" if waiting else "conflicted"
    return f"failed: {outcome.error}"


async def _set_status(
    statuses: StatusStore | None, ttl: float, tx_id: str, outcome: Outcome | None, why: str
) -> None:
    if statuses is None:
        return
    status = await statuses.get(tx_id)
    if status is None:
        return
    if outcome is None:
        status = status.advance(TransactionState.FAILED, last_error=why)
    elif outcome.done:
        # What the database computed for its creates, as a drain's commit records it.
        extra = {"generated": as_json(outcome.generated)} if outcome.generated else {}
        status = status.advance(
            TransactionState.COMMITTED, committed_at=utc_now(), last_error=why, **extra
        )
    elif outcome.conflicted:
        reason = "; ".join(c.describe() for c in outcome.conflicts)
        status = status.advance(TransactionState.CONFLICTED, last_error=reason)
    else:
        return
    await statuses.put(status, ttl)


async def _find(engine: AsyncEngine, conflict_id: int) -> ConflictRecord:
    async with engine.connect() as conn:
        record = await get_conflict(conn, conflict_id)
    if record is None:
        raise ConflictError(
            f"there is no conflict {conflict_id}: see `ccat-buffering conflicts list`"
        )
    if not record.unresolved:
        raise ConflictError(
            f"conflict {conflict_id} is not waiting for a resolution ({record.conflict.outcome}"
            f"{'' if record.resolved_at is None else f' at {record.resolved_at.isoformat()}'})"
        )
    if record.conflict.outcome is ConflictOutcome.WAITING:
        raise ConflictError(
            f"conflict {conflict_id} waits behind transaction "
            f"{record.conflict.theirs.get('waits_for')}: resolve that one's conflict first"
        )
    if not record.payload:
        raise ConflictError(f"conflict {conflict_id} holds no transaction to apply")
    return record


async def resolve_conflict(
    engine: AsyncEngine,
    registry: ModelRegistry,
    conflict_id: int,
    keep: Keep,
    *,
    statuses: StatusStore | None = None,
    status_ttl: float = 3600.0,
) -> Resolution:
    """Resolve one rejected conflict, then release what waited behind its transaction.

    Args:
        engine: The main database.
        registry: The mapped classes.
        conflict_id: The conflict log's id.
        keep: ``mine`` applies the transaction without its base checks (a
            ``version_id_col`` is bumped from the row's version); ``theirs``
            drops it.
        statuses: The writing site's status store, to set the statuses of the
            transactions resolved and released.
        status_ttl: Seconds a terminal status is kept.

    Returns:
        What was done.

    Raises:
        ConflictError: No such conflict, not unresolved, waiting behind
            another, or ``mine`` cannot be applied (the row is gone).
    """
    record = await _find(engine, conflict_id)
    assert record.payload is not None
    tx = Transaction.from_json(record.payload)
    executor = TransactionExecutor(engine, registry, site=record.site)
    if keep == "mine":
        result = await executor.execute_unchecked(tx)
        outcome = result.outcomes[0]
        if not outcome.done:
            detail = outcome.error or "; ".join(c.describe() for c in outcome.conflicts)
            raise ConflictError(f"conflict {conflict_id}: mine cannot be applied: {detail}")
        await _set_status(
            statuses, status_ttl, tx.transaction_id, outcome, "conflict resolved: kept mine"
        )
    else:
        async with engine.begin() as conn:
            await mark_resolved(conn, tx.transaction_id, ConflictOutcome.RESOLVED_THEIRS)
        await _set_status(
            statuses,
            status_ttl,
            tx.transaction_id,
            None,
            "conflict resolved: kept theirs (dropped)",
        )
    resolution = Resolution(conflict_id, tx.transaction_id, keep)
    async with engine.connect() as conn:
        pending = await unresolved_payloads(conn, record.site)
    chain = Holds()
    chain.hold(tx)
    behind: list[Transaction] = []
    for waiting in pending:
        if waiting.conflict.outcome is not ConflictOutcome.WAITING or not waiting.payload:
            continue
        later = Transaction.from_json(waiting.payload)
        if chain.blocker(later) is not None:
            behind.append(later)
            chain.hold(later)
    if not behind:
        return resolution
    holds = executor._session.holds
    async with engine.connect() as conn:
        await holds.load(conn, record.site)
    for later in behind:
        holds.release(later.transaction_id)
    for later in behind:
        result = await executor.execute_released(later)
        outcome = result.outcomes[0]
        resolution.released.append((later.transaction_id, _fate(outcome)))
        await _set_status(statuses, status_ttl, later.transaction_id, outcome, "released")
    return resolution
