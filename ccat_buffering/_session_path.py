"""The session path of a batch: SQLAlchemy's ORM statements, one round trip each.

Every driver takes it (asyncpg, aiosqlite), and psycopg takes it for a batch
with a ``ref()`` (a value known only once an earlier step ran). The batch
runs in one database transaction with a SAVEPOINT per buffered transaction,
so that one bad transaction rolls back alone; each applied transaction's
ledger row is written inside its savepoint. The batch stops at the first
transaction that fails in a way that holds the queue: what came before it
commits, what comes after it is left unapplied, so that it can be retried
before any of them. Batches that only insert and
update are first tried as a few grouped statements in one savepoint (see
:mod:`ccat_buffering._grouping`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ccat_buffering._drift import schema_drift
from ccat_buffering._grouping import plan
from ccat_buffering.columns import columns_of
from ccat_buffering.conflicts.bulk import row_updates
from ccat_buffering.conflicts.checked import (
    Checks,
    ConflictRejected,
    checked_delete,
    checked_update,
)
from ccat_buffering.conflicts.holds import Holds
from ccat_buffering.conflicts.inserts import checked_bulk_create, checked_create
from ccat_buffering.conflicts.kinds import Conflict, ConflictOutcome
from ccat_buffering.conflicts.log import conflict_rows, insert_rows, mark_resolved, unresolved_of
from ccat_buffering.database import (
    applied_ids,
    ledger_rows,
    ledger_table,
    not_the_transactions_fault,
)
from ccat_buffering.errors import UnresolvedReferenceError
from ccat_buffering.lsn import LSN
from ccat_buffering.models import Operation, Ref, Step, Transaction
from ccat_buffering.outcome import Outcome
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.retry import FailureKind, classify_failure, describe_error

__all__ = [
    "CommitRefusedError",
    "SessionPath",
    "failure_outcome",
    "generated_fields",
    "where",
]


class CommitRefusedError(Exception):
    """COMMIT failed for a reason of the data (a deferred constraint), not the link."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def failure_outcome(tx: Transaction, error: BaseException, registry: ModelRegistry) -> Outcome:
    """The outcome of ``tx`` failing with ``error``: its data's fault, or schema drift.

    Drift (see :mod:`ccat_buffering._drift`) is reported as an outage-class
    :class:`~ccat_buffering.errors.ConfigurationError` that names the table
    and column, so that the queue pauses at this transaction.
    """
    drift = schema_drift(error, registry)
    if drift is not None:
        return Outcome(
            tx.transaction_id, error=drift.error(describe_error(error)), kind=FailureKind.OUTAGE
        )
    return Outcome(tx.transaction_id, error=error, kind=classify_failure(error))


def generated_fields(registry: ModelRegistry, step: Step) -> tuple[str, ...]:
    """The fields of a create step's row that the database computes (none for other steps)."""
    if step.operation is not Operation.CREATE:
        return ()
    return columns_of(registry.model(step.model)).generated_fields(step.data or {})


def where(model: type[Any], key: Mapping[str, Any]) -> list[Any]:
    """The WHERE clauses that pick the row of ``model`` with ``key``."""
    return [getattr(model, name) == value for name, value in key.items()]


class SessionPath:
    """Applies a batch statement by statement through an ORM session.

    Every update, delete and create is checked against the row it meets
    (:mod:`ccat_buffering.conflicts.checked`); a conflict its policy rejects
    rolls its transaction back to its savepoint, and its log row is written
    in the batch's database transaction instead.

    Args:
        registry: The mapped classes (and their conflict policies).
        ledger: Record and check applied transaction ids.
        site: The site whose transactions these are, for the conflict log and the
            ledger rows.
        hold: Later transactions wait behind a rejected one (a buffering site);
            off at a main site, whose services learn of a conflict at once.
    """

    def __init__(
        self, registry: ModelRegistry, ledger: bool, site: str = "", hold: bool = True
    ) -> None:
        self.registry = registry
        self.ledger = ledger
        self.site = site
        self.holds = Holds()
        self.hold = hold
        if not hold:
            self.holds.loaded = True  # and nothing is ever held

    async def applied_ids(self, conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the ledger holds (none when the ledger is off)."""
        return await applied_ids(conn, ids) if self.ledger else set()

    async def run(
        self,
        conn: AsyncConnection,
        runnable: list[tuple[int, Transaction]],
        outcomes: list[Outcome],
        *,
        force: bool = False,
        release: bool = False,
    ) -> LSN | None:
        """Apply ``runnable`` in one database transaction.

        ``force``: without base checks, resolving their conflicts as ``mine``;
        ``release``: transactions that waited behind a resolved conflict.
        """
        await conn.begin()
        if not self.holds.loaded:
            await self.holds.load(conn, self.site)
        done = await self.applied_ids(conn, [tx.transaction_id for _, tx in runnable])
        session = AsyncSession(bind=conn, autoflush=False, expire_on_commit=False)
        todo = []
        first_of: dict[str, int] = {}
        copies: list[tuple[int, int]] = []
        for index, tx in runnable:
            if tx.transaction_id in done:
                outcomes[index] = Outcome(tx.transaction_id, already_applied=True)
            elif tx.transaction_id in first_of:
                # The same transaction buffered twice (a lost reply, resubmitted):
                # it is applied once, and the copy shares the first one's fate.
                copies.append((index, first_of[tx.transaction_id]))
            else:
                first_of[tx.transaction_id] = index
                todo.append((index, tx))
        blocked = any(self.holds.blocker(tx) for _, tx in todo)
        if force or release or blocked or not await self.apply_grouped(session, todo, outcomes):
            for index, tx in todo:
                outcomes[index] = await self.apply_one(session, tx, force=force, release=release)
                # A conflicted one holds nothing (it left the queue); a failure
                # that is retried does: the rest wait behind it, unapplied.
                if outcomes[index].holds:
                    break
        for index, first in copies:
            original = outcomes[first]
            outcomes[index] = (
                Outcome(original.transaction_id, already_applied=True)
                if original.done
                else original
            )
        await session.close()
        try:
            await conn.commit()
        except Exception as exc:
            if classify_failure(exc) is FailureKind.OUTAGE:
                raise
            raise CommitRefusedError(exc) from exc
        if conn.dialect.name != "postgresql":
            return None
        # After COMMIT, on the same connection, so that the LSN covers our commit
        # record; read even when every transaction was already in the ledger,
        # since their earlier commit lies before it too.
        lsn_text = (await conn.exec_driver_sql("SELECT pg_current_wal_insert_lsn()::text")).scalar()
        await conn.rollback()
        return LSN.parse(str(lsn_text))

    async def record(self, session: AsyncSession, transactions: Sequence[Transaction]) -> None:
        if self.ledger and transactions:
            await session.execute(insert(ledger_table), ledger_rows(transactions, self.site))

    async def apply_grouped(
        self,
        session: AsyncSession,
        todo: list[tuple[int, Transaction]],
        outcomes: list[Outcome],
    ) -> bool:
        """Apply the batch as a few grouped statements in one savepoint, if it can be."""
        grouped = plan([tx for _, tx in todo], self.registry) if len(todo) > 1 else None
        if grouped is None:
            return False
        try:
            async with session.begin_nested():
                for model, rows in grouped.inserts:
                    await session.execute(insert(self.registry.model(model)), rows)
                strict = Checks(self.registry.conflict_policies, strict=True)
                for step in grouped.updates:
                    await self.apply_step(session, step, {}, False, strict)
                await self.record(session, [tx for _, tx in todo])
        except Exception as exc:
            if classify_failure(exc) is FailureKind.OUTAGE:
                raise not_the_transactions_fault(exc, "during a batch") from exc
            return False  # one by one, so that the error lands on its own transaction
        for index, tx in todo:
            outcomes[index] = Outcome(tx.transaction_id, applied=True)
        return True

    async def apply_one(
        self, session: AsyncSession, tx: Transaction, *, force: bool = False, release: bool = False
    ) -> Outcome:
        """Apply one transaction in its own savepoint; a rejected conflict rolls it back.

        A transaction that depends on one of the site's unresolved conflicts
        is not tried: it waits with it. ``force`` (an operator's ``--keep
        mine``) applies without base checks and marks its conflicts resolved.
        """
        if not force:
            waiting = await self.wait_behind(session, tx)
            if waiting is not None:
                return waiting
        checks = Checks(self.registry.conflict_policies, written_at=tx.created_at, force=force)
        try:
            async with session.begin_nested():
                generated = await self.apply(session, tx, checks)
                await self.record(session, [tx])
                await insert_rows(session, conflict_rows(self.site, tx, checks.conflicts))
                if force or release:
                    done = ConflictOutcome.RESOLVED_MINE if force else ConflictOutcome.RELEASED
                    await mark_resolved(session, tx.transaction_id, done)
        except ConflictRejected as rejected:
            # Outside the savepoint, so that the log row outlives the rollback;
            # a redelivery of a transaction already logged adds no second row.
            if release:
                await mark_resolved(session, tx.transaction_id, ConflictOutcome.RELEASED)
            if not await unresolved_of(await session.connection(), tx.transaction_id):
                await insert_rows(session, conflict_rows(self.site, tx, [rejected.conflict]))
            if self.hold:
                self.holds.hold(tx)
            return Outcome(tx.transaction_id, conflicted=True, conflicts=(rejected.conflict,))
        except Exception as exc:
            kind = classify_failure(exc)
            if kind is FailureKind.OUTAGE:
                raise not_the_transactions_fault(
                    exc, f"while applying {tx.transaction_id}"
                ) from exc
            return failure_outcome(tx, exc, self.registry)
        return Outcome(
            tx.transaction_id,
            applied=True,
            generated=generated,
            conflicts=tuple(checks.conflicts),
        )

    async def wait_behind(self, session: AsyncSession, tx: Transaction) -> Outcome | None:
        """``waiting``, logged, when ``tx`` depends on an unresolved conflict of its site."""
        blocker = self.holds.blocker(tx)
        if blocker is None:
            return None
        conn = await session.connection()
        found = await unresolved_of(conn, blocker)
        if not found:
            self.holds.release(blocker)  # resolved meanwhile (by an operator elsewhere)
            return await self.wait_behind(session, tx)
        first = tx.steps[0]
        conflict = Conflict(
            step_id=first.step_id,
            model=first.model,
            key=dict(first.key or {}),
            kind=found[0].conflict.kind,
            base={},
            mine={},
            theirs={"waits_for": blocker},
            policy=found[0].conflict.policy,
            outcome=ConflictOutcome.WAITING,
        )
        if not await unresolved_of(conn, tx.transaction_id):
            await insert_rows(session, conflict_rows(self.site, tx, [conflict]))
        self.holds.hold(tx)
        return Outcome(tx.transaction_id, conflicted=True, conflicts=(conflict,))

    async def apply(
        self, session: AsyncSession, tx: Transaction, checks: Checks
    ) -> dict[str, dict[str, Any]]:
        """Apply ``tx``'s steps in order; what the database computed for its creates."""
        wanted = {ref.step for step in tx.steps for ref in step.refs()}
        produced: dict[str, Mapping[str, Any]] = {}
        generated: dict[str, dict[str, Any]] = {}
        for step in tx.steps:
            computed = generated_fields(self.registry, step)
            row = await self.apply_step(session, step, produced, step.step_id in wanted, checks)
            if row is not None:
                produced[step.step_id] = row
                if computed:
                    generated[step.step_id] = {name: row[name] for name in computed}
        return generated

    def resolve(
        self, record: Mapping[str, Any], produced: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, value in record.items():
            if isinstance(value, Ref):
                row = produced.get(value.step)
                if row is None or value.field not in row:
                    raise UnresolvedReferenceError(
                        f"step {value.step!r} produced no value for {value.field!r}"
                    )
                value = row[value.field]
            values[name] = value
        return values

    async def apply_step(
        self,
        session: AsyncSession,
        step: Step,
        produced: Mapping[str, Mapping[str, Any]],
        wanted: bool,
        checks: Checks | None = None,
    ) -> Mapping[str, Any] | None:
        model = self.registry.model(step.model)
        fields = sorted(self.registry.fields(step.model))
        returning = [getattr(model, name) for name in fields]
        op = step.operation
        checks = checks or Checks(self.registry.conflict_policies)
        if op is Operation.CREATE:
            # The row comes back in the INSERT's own round trip (RETURNING): what
            # a later step's ref() needs, and what the database computed.
            data = self.resolve(step.data or {}, produced)
            created = await checked_create(session, model, step, data, returning, checks)
            return None if created is None else dict(zip(fields, created, strict=True))
        if op is Operation.UPDATE:
            key = self.resolve(step.key or {}, produced)
            data = self.resolve(step.data or {}, produced)
            row = await checked_update(session, model, step, key, data, returning, checks)
            return None if row is None else dict(zip(fields, row, strict=True))
        if op is Operation.DELETE:
            key = self.resolve(step.key or {}, produced)
            await checked_delete(session, model, step, key, checks)
            return None
        if op is Operation.BULK_CREATE:
            records = [self.resolve(r, produced) for r in step.records or []]
            await checked_bulk_create(session, model, step, records, checks)
            return None
        for update in row_updates(step):  # each row checked as a single update is
            key = self.resolve(update.key or {}, produced)
            data = self.resolve(update.data or {}, produced)
            await checked_update(session, model, update, key, data, returning[:1], checks)
        return None
