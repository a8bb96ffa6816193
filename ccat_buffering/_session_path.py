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

from sqlalchemy import delete, insert
from sqlalchemy import update as sa_update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ccat_buffering._drift import schema_drift
from ccat_buffering._grouping import plan
from ccat_buffering.columns import columns_of
from ccat_buffering.database import (
    applied_ids,
    ledger_rows,
    ledger_table,
    not_the_transactions_fault,
)
from ccat_buffering.errors import RecordNotFoundError, UnresolvedReferenceError
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

    Args:
        registry: The mapped classes.
        ledger: Record and check applied transaction ids.
        site: The site recorded in the ledger rows.
    """

    def __init__(self, registry: ModelRegistry, ledger: bool, site: str | None = None) -> None:
        self.registry = registry
        self.ledger = ledger
        self.site = site

    async def applied_ids(self, conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the ledger holds (none when the ledger is off)."""
        return await applied_ids(conn, ids) if self.ledger else set()

    async def run(
        self,
        conn: AsyncConnection,
        runnable: list[tuple[int, Transaction]],
        outcomes: list[Outcome],
    ) -> LSN | None:
        await conn.begin()
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
        if not await self.apply_grouped(session, todo, outcomes):
            for index, tx in todo:
                outcomes[index] = await self.apply_one(session, tx)
                if outcomes[index].holds:
                    break  # the rest wait behind it, unapplied (Outcome.waiting)
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
                for step in grouped.updates:
                    await self.apply_step(session, step, {}, False)
                await self.record(session, [tx for _, tx in todo])
        except Exception as exc:
            if classify_failure(exc) is FailureKind.OUTAGE:
                raise not_the_transactions_fault(exc, "during a batch") from exc
            return False  # one by one, so that the error lands on its own transaction
        for index, tx in todo:
            outcomes[index] = Outcome(tx.transaction_id, applied=True)
        return True

    async def apply_one(self, session: AsyncSession, tx: Transaction) -> Outcome:
        """Apply one transaction in its own savepoint."""
        try:
            async with session.begin_nested():
                generated = await self.apply(session, tx)
                await self.record(session, [tx])
        except Exception as exc:
            kind = classify_failure(exc)
            if kind is FailureKind.OUTAGE:
                raise not_the_transactions_fault(
                    exc, f"while applying {tx.transaction_id}"
                ) from exc
            return failure_outcome(tx, exc, self.registry)
        return Outcome(tx.transaction_id, applied=True, generated=generated)

    async def apply(self, session: AsyncSession, tx: Transaction) -> dict[str, dict[str, Any]]:
        """Apply ``tx``'s steps in order; what the database computed for its creates."""
        wanted = {ref.step for step in tx.steps for ref in step.refs()}
        produced: dict[str, Mapping[str, Any]] = {}
        generated: dict[str, dict[str, Any]] = {}
        for step in tx.steps:
            computed = (
                generated_fields(self.registry, step) if step.operation is Operation.CREATE else ()
            )
            row = await self.apply_step(session, step, produced, step.step_id in wanted, computed)
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
        computed: Sequence[str] = (),
    ) -> Mapping[str, Any] | None:
        model = self.registry.model(step.model)
        fields = sorted(self.registry.fields(step.model))
        returning = [getattr(model, name) for name in fields]
        op = step.operation
        statement: Any
        if op is Operation.CREATE:
            statement = insert(model).values(**self.resolve(step.data or {}, produced))
            if not wanted and not computed:
                await session.execute(statement)
                return None
            # What the database computes comes back in the INSERT's own round trip.
            fields = fields if wanted else list(computed)
            returning = [getattr(model, name) for name in fields]
            row = (await session.execute(statement.returning(*returning))).one()
            return dict(zip(fields, row, strict=True))
        if op is Operation.UPDATE:
            key = self.resolve(step.key or {}, produced)
            statement = (
                sa_update(model)
                .where(*where(model, key))
                .values(**self.resolve(step.data or {}, produced))
                .returning(*returning)
                .execution_options(synchronize_session=False)
            )
            rows = (await session.execute(statement)).all()
            if not rows:
                raise RecordNotFoundError(f"step {step.step_id!r}: no {step.model} with {key}")
            return dict(zip(fields, rows[0], strict=True))
        if op is Operation.DELETE:
            key = self.resolve(step.key or {}, produced)
            statement = (
                delete(model).where(*where(model, key)).returning(*returning[:1])
            ).execution_options(synchronize_session=False)
            if not (await session.execute(statement)).all():
                raise RecordNotFoundError(f"step {step.step_id!r}: no {step.model} with {key}")
            return None
        records = [self.resolve(r, produced) for r in step.records or []]
        if op is Operation.BULK_CREATE:
            await session.execute(insert(model), records)
            return None
        for i, record in enumerate(records):
            key = {name: record[name] for name in step.key_fields}
            changes = {k: v for k, v in record.items() if k not in key}
            statement = (
                sa_update(model)
                .where(*where(model, key))
                .values(**changes)
                .returning(*returning[:1])
                .execution_options(synchronize_session=False)
            )
            if not (await session.execute(statement)).all():
                raise RecordNotFoundError(
                    f"step {step.step_id!r} record {i}: no {step.model} with {key}"
                )
        return None
