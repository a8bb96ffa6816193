"""Apply buffered transactions to the main database, exactly once.

A batch of transactions runs in one database transaction with a SAVEPOINT per
buffered transaction, so that one bad transaction rolls back alone. Each
applied transaction's id goes into the **applied-transactions ledger** inside
its savepoint: a transaction whose commit succeeded but whose acknowledgement
was lost is found there on redelivery and skipped. After COMMIT (never
inside the transaction) the commit's LSN is read on the same connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, DateTime, MetaData, String, Table, delete, event, insert, select
from sqlalchemy import update as sa_update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from ccat_buffering._grouping import Plan, plan
from ccat_buffering._link import LinkTimeouts, Watchdog, connect_options, watch_engine, watched
from ccat_buffering._pipeline import (
    Pipeline,
    PipelineResult,
    Statement,
    must_match,
    row_chunks,
)
from ccat_buffering.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    ExecutionError,
    RecordNotFoundError,
    UnknownColumnError,
    UnresolvedReferenceError,
)
from ccat_buffering.lsn import LSN
from ccat_buffering.models import Operation, Ref, Step, Transaction, utc_now
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.retry import FailureKind, classify_failure, describe_error, is_schema_lag

__all__ = [
    "LEDGER_TABLE_NAME",
    "BatchResult",
    "Outcome",
    "TransactionExecutor",
    "create_engine",
    "ledger_metadata",
    "ledger_table",
]

LEDGER_TABLE_NAME = "ccat_buffering_applied_transactions"

ledger_metadata = MetaData()
"""Metadata holding only the ledger table; include it in Alembic's ``target_metadata``."""

ledger_table = Table(
    LEDGER_TABLE_NAME,
    ledger_metadata,
    Column("transaction_id", String(36), primary_key=True),
    Column("endpoint", String(128), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)
"""The applied-transactions ledger: one row per transaction ever applied."""


def create_engine(url: str, *, timeouts: LinkTimeouts | None = None, **options: Any) -> AsyncEngine:
    """Create an async engine that savepoints work on and that a hung link cannot stall.

    On PostgreSQL the connections get the connect timeout, TCP keepalive and
    the server-side ``statement_timeout``, ``lock_timeout`` and
    ``idle_in_transaction_session_timeout`` of ``timeouts`` (keys of
    ``options["connect_args"]`` win over them). On SQLite the driver's own
    transaction handling is switched off so that SAVEPOINT behaves as
    documented, and foreign keys are enforced.

    Args:
        url: An SQLAlchemy async URL (``postgresql+psycopg://``,
            ``postgresql+asyncpg://``, ``sqlite+aiosqlite://``).
        timeouts: The link's limits; the defaults of :class:`LinkTimeouts`
            when ``None``.
        **options: Passed to :func:`sqlalchemy.ext.asyncio.create_async_engine`.

    Returns:
        The engine.
    """
    from sqlalchemy.engine import make_url

    timeouts = timeouts or LinkTimeouts()
    driver = make_url(url).get_driver_name()
    connect_args = {**connect_options(driver, timeouts), **options.pop("connect_args", {})}
    if connect_args:
        options["connect_args"] = connect_args
    engine = create_async_engine(url, **options)
    watch_engine(engine, timeouts)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


def not_the_transactions_fault(
    exc: BaseException, where: str
) -> ExecutionError | ConfigurationError:
    """The error that pauses the queue for ``exc``, an outage or a schema not yet deployed.

    Args:
        exc: What the database raised (classified as an outage).
        where: What was being done, for the message.

    Returns:
        :class:`ConfigurationError` for schema lag, else :class:`DatabaseUnavailableError`.
    """
    if isinstance(exc, DatabaseUnavailableError | ConfigurationError):
        return exc
    if is_schema_lag(exc):
        return ConfigurationError(
            f"the main database lacks part of the schema ({describe_error(exc)}) {where}; "
            "deploy the migration there: the queue waits and resumes by itself"
        )
    return DatabaseUnavailableError(f"the database failed {where}: {exc}")


def _sqlstate_of(error: BaseException) -> str | None:
    code = getattr(getattr(error, "orig", None), "sqlstate", None)
    return code if isinstance(code, str) else getattr(error, "sqlstate", None)


def _lsn_of(result: PipelineResult) -> LSN | None:
    rows = list(result.rows.values())
    return LSN.parse(rows[-1][0][0]) if rows else None


class _CommitRefused(Exception):
    """COMMIT failed for a reason of the data (a deferred constraint), not the link."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Outcome:
    """What became of one transaction in a batch.

    Attributes:
        transaction_id: The transaction.
        applied: Its steps were applied in this batch.
        already_applied: The ledger showed it applied before; nothing was done.
        error: Why it failed, if it did (its savepoint was rolled back).
        kind: Whose fault the failure was.
    """

    transaction_id: str
    applied: bool = False
    already_applied: bool = False
    error: BaseException | None = None
    kind: FailureKind | None = None

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


@dataclass
class _Prepared:
    """A batch checked and planned, not yet sent (see :meth:`TransactionExecutor.prepare`)."""

    transactions: tuple[Transaction, ...]
    outcomes: list[Outcome]
    runnable: list[tuple[int, Transaction]]
    pipelined: bool
    todo: list[tuple[int, Transaction]] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    first: Pipeline | None = None


class TransactionExecutor:
    """Applies transactions to the main database through registered mapped classes.

    Args:
        engine: The main database.
        registry: The mapped classes steps may name.
        ledger: Record and check applied transaction ids (exactly-once
            effect); switch off only to measure what it costs.
        timeouts: The link's limits; a call unanswered for
            ``timeouts.statement`` seconds discards its connection and fails
            as an outage.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        registry: ModelRegistry,
        *,
        ledger: bool = True,
        timeouts: LinkTimeouts | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.ledger = ledger
        self.timeouts = timeouts or LinkTimeouts()
        self._prepared: _Prepared | None = None
        watch_engine(engine)

    async def ping(self) -> bool:
        """Whether the database answers a trivial query within the statement timeout."""
        try:
            async with self.engine.connect() as conn, watched(conn, self.timeouts.statement):
                await conn.exec_driver_sql("SELECT 1")
        except Exception:
            return False
        return True

    async def create_ledger(self) -> None:
        """Create the ledger table if it does not exist."""
        async with self.engine.begin() as conn:
            await conn.run_sync(ledger_metadata.create_all)

    async def is_applied(self, transaction_id: str) -> bool:
        """Whether the ledger holds ``transaction_id``."""
        async with self.engine.connect() as conn:
            return bool(await self._applied_ids(conn, [transaction_id]))

    async def execute(self, transaction: Transaction) -> Outcome:
        """Apply one transaction in its own database transaction.

        Returns:
            Its outcome (errors are returned, not raised, except outages).

        Raises:
            DatabaseUnavailableError: The database could not be reached.
        """
        return (await self.execute_batch([transaction])).outcomes[0]

    async def execute_batch(self, transactions: Sequence[Transaction]) -> BatchResult:
        """Apply transactions in order, in one database transaction, a savepoint each.

        A transaction that fails rolls back to its savepoint and the rest go
        on; one commit covers all that succeeded.

        Args:
            transactions: In buffer order.

        Returns:
            Outcomes in the same order, and the commit's LSN.

        Raises:
            DatabaseUnavailableError: The database could not be reached or the
                batch as a whole failed; nothing of the batch may be assumed
                applied (the ledger settles it on redelivery).
        """
        batch = self._take_prepared(transactions)
        outcomes, runnable, pipelined = batch.outcomes, batch.runnable, batch.pipelined
        if not runnable:
            return BatchResult(outcomes, None)
        try:
            lsn = await self._run(batch)
        except _CommitRefused as refused:
            if len(runnable) == 1:
                index, tx = runnable[0]
                error = refused.error
                outcomes[index] = Outcome(
                    tx.transaction_id, error=error, kind=classify_failure(error)
                )
                return BatchResult(outcomes, None)
            # A deferred constraint refused the whole commit: halves, in order, until
            # the error lands on the transaction that caused it (about 2 log2(n)
            # more batches for one such transaction, not n).
            lsn = None
            half = len(runnable) // 2
            for part in (runnable[:half], runnable[half:]):
                result = await self.execute_batch([tx for _, tx in part])
                for (index, _), outcome in zip(part, result.outcomes, strict=True):
                    outcomes[index] = outcome
                lsn = result.commit_lsn or lsn
        except (DatabaseUnavailableError, ConfigurationError):
            raise
        except Exception as exc:
            if is_schema_lag(exc):
                raise not_the_transactions_fault(exc, "while applying a batch") from exc
            raise DatabaseUnavailableError(
                f"the batch could not be applied ({classify_failure(exc)}): {exc}"
            ) from exc
        if pipelined:
            # Its ledger row goes first in each transaction: already settled.
            return BatchResult(outcomes, lsn)
        return BatchResult(await self._settle_failures(outcomes), lsn)

    def prepare(self, transactions: Sequence[Transaction]) -> None:
        """Do the work of :meth:`execute_batch` that needs no database, ahead of it.

        The checks, the plan and the first message of a batch cost client
        CPU in proportion to its size; the processor prepares the next batch
        while the current one waits on the link, so that its own call only
        sends. One batch is held; :meth:`execute_batch` of the very same
        transaction objects, in the same order, uses it, and any other batch
        is prepared anew.

        Args:
            transactions: In buffer order.
        """
        self._prepared = self._prepare(transactions)

    def _take_prepared(self, transactions: Sequence[Transaction]) -> _Prepared:
        held, self._prepared = self._prepared, None
        if (
            held is not None
            and len(held.transactions) == len(transactions)
            and all(a is b for a, b in zip(held.transactions, transactions, strict=True))
        ):
            return held
        return self._prepare(transactions)

    def _prepare(self, transactions: Sequence[Transaction]) -> _Prepared:
        outcomes: list[Outcome] = []
        for tx in transactions:
            try:
                self.registry.check(tx)
                self._check_refs(tx)
            except Exception as exc:
                outcomes.append(Outcome(tx.transaction_id, error=exc, kind=classify_failure(exc)))
            else:
                outcomes.append(Outcome(tx.transaction_id))
        runnable = [(i, tx) for i, tx in enumerate(transactions) if outcomes[i].error is None]
        pipelined = bool(runnable) and self._pipelines(runnable)
        batch = _Prepared(tuple(transactions), outcomes, runnable, pipelined)
        if batch.pipelined:
            batch.todo, batch.copies = self._unique(runnable)
            if len(batch.todo) > 1:
                grouped = plan([tx for _, tx in batch.todo], self.registry)
                if grouped is not None:
                    batch.first = self._grouped_message(batch.todo, grouped)
        return batch

    def _grouped_message(self, todo: list[tuple[int, Transaction]], grouped: Plan) -> Pipeline:
        """The whole batch as one message: the plan's statements, COMMIT, the LSN."""
        first = Pipeline(self.engine.dialect)
        first.text("BEGIN")
        if self.ledger:
            # One array parameter: an IN list of a thousand costs the compiler
            # a thousand binds, and psycopg as many placeholders to convert.
            table = self.engine.dialect.identifier_preparer.format_table(ledger_table)
            first.add(
                Statement(
                    f"SELECT transaction_id FROM {table} WHERE transaction_id = ANY($1::varchar[])",
                    [[tx.transaction_id for _, tx in todo]],
                    positional=True,
                )
            )
            first.insert_rows(ledger_table, self._ledger_rows([tx for _, tx in todo]))
        for model, rows in grouped.inserts:
            self._pipeline_rows(first, model, rows, None)
        self._pipeline_steps(first, grouped.updates, None)
        first.text("COMMIT")
        first.sync()
        first.text("SELECT pg_current_wal_insert_lsn()::text")
        return first

    async def _settle_failures(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Report a failure as applied when the ledger holds it (applied by another holder).

        A processor whose lease lapsed mid-batch may commit the same
        transaction concurrently; its twin here then fails on the ledger's key.
        That transaction is applied, and must never be dead-lettered.
        """
        failed = [o.transaction_id for o in outcomes if o.error is not None]
        if not failed or not self.ledger:
            return outcomes
        try:
            async with self.engine.connect() as conn:
                done = await self._applied_ids(conn, failed)
        except Exception:
            return outcomes  # the failures stand; a redelivery settles them
        return [
            Outcome(o.transaction_id, already_applied=True)
            if o.error is not None and o.transaction_id in done
            else o
            for o in outcomes
        ]

    async def _run(self, batch: _Prepared) -> LSN | None:
        async with self.engine.connect() as conn, watched(conn, self.timeouts.statement) as dog:
            try:
                if batch.pipelined:
                    return await self._run_pipelined(conn, dog, batch)
                return await self._run_on(conn, batch.runnable, batch.outcomes)
            except BaseException:
                if dog is not None and dog.fired:
                    # Discarded here, so that the pool does not try (and log) a
                    # ROLLBACK on a socket that is already shut.
                    with contextlib.suppress(Exception):
                        await conn.invalidate()
                    # from None: the driver's own error (a closed socket, a
                    # pending rollback) says less than this; it stays __context__.
                    raise DatabaseUnavailableError(
                        f"the main database did not answer within {dog.timeout:g} s "
                        "(statement_timeout); the connection was discarded"
                    ) from None
                raise

    async def _run_on(
        self,
        conn: AsyncConnection,
        runnable: list[tuple[int, Transaction]],
        outcomes: list[Outcome],
    ) -> LSN | None:
        await conn.begin()
        done = await self._applied_ids(conn, [tx.transaction_id for _, tx in runnable])
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
        if not await self._apply_grouped(session, todo, outcomes):
            for index, tx in todo:
                outcomes[index] = await self._apply_one(session, tx)
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
            raise _CommitRefused(exc) from exc
        if conn.dialect.name != "postgresql":
            return None
        # After COMMIT, on the same connection, so that the LSN covers our commit
        # record; read even when every transaction was already in the ledger,
        # since their earlier commit lies before it too.
        lsn_text = (await conn.exec_driver_sql("SELECT pg_current_wal_insert_lsn()::text")).scalar()
        await conn.rollback()
        return LSN.parse(str(lsn_text))

    def _pipelines(self, runnable: Sequence[tuple[int, Transaction]]) -> bool:
        """Whether the batch can go through psycopg's pipeline mode (no ``ref()``)."""
        if self.engine.dialect.driver != "psycopg":
            return False
        return not any(step.refs() for _, tx in runnable for step in tx.steps)

    def _pipeline_steps(self, pipeline: Pipeline, steps: Sequence[Step], owner: int | None) -> None:
        for step in steps:
            model = self.registry.model(step.model)
            op = step.operation
            if op is Operation.CREATE or op is Operation.BULK_CREATE:
                records = [dict(r) for r in step.records or []] or [dict(step.data or {})]
                self._pipeline_rows(pipeline, step.model, records, owner)
            elif op is Operation.UPDATE or op is Operation.DELETE:
                key = dict(step.key or {})
                statement: Any = (
                    sa_update(model).where(*self._where(model, key)).values(**(step.data or {}))
                    if op is Operation.UPDATE
                    else delete(model).where(*self._where(model, key))
                )
                missing = RecordNotFoundError(f"step {step.step_id!r}: no {step.model} with {key}")
                pipeline.sql(must_match(statement), owner=owner, missing=missing)
            else:
                for i, record in enumerate(step.records or []):
                    key = {name: record[name] for name in step.key_fields}
                    changes = {k: v for k, v in record.items() if k not in key}
                    missing = RecordNotFoundError(
                        f"step {step.step_id!r} record {i}: no {step.model} with {key}"
                    )
                    statement = sa_update(model).where(*self._where(model, key)).values(**changes)
                    pipeline.sql(must_match(statement), owner=owner, missing=missing)

    def _pipeline_rows(
        self, pipeline: Pipeline, model: str, rows: list[dict[str, Any]], owner: int | None
    ) -> None:
        table = self.registry.mapper(model).local_table
        for chunk in row_chunks(rows):
            if not (isinstance(table, Table) and pipeline.insert_rows(table, chunk, owner=owner)):
                pipeline.sql(insert(self.registry.model(model)).values(chunk), owner=owner)

    def _ledger_rows(self, transactions: Sequence[Transaction]) -> list[dict[str, Any]]:
        now = utc_now()
        return [
            {"transaction_id": tx.transaction_id, "endpoint": tx.endpoint, "applied_at": now}
            for tx in transactions
        ]

    async def _run_pipelined(
        self,
        conn: AsyncConnection,
        dog: Watchdog | None,
        batch: _Prepared,
    ) -> LSN | None:
        """The batch in one round trip (two when a transaction in it fails)."""
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        touch = None if dog is None else dog.touch
        todo, copies, outcomes = batch.todo, batch.copies, batch.outcomes
        done: set[str] = set()
        lsn: LSN | None = None
        first = batch.first
        if first is not None:
            result = await first.send(driver, touch)
            if not result.errors:
                for index, tx in todo:
                    outcomes[index] = Outcome(tx.transaction_id, applied=True)
                self._copy_outcomes(copies, outcomes)
                return _lsn_of(result)
            error = result.errors[0]
            self._raise_unless_the_transactions(error, "during a batch")
            if result.failed_statements[0].sql == "COMMIT":
                raise _CommitRefused(error)
            if self.ledger and 1 in result.rows:
                done = {row[0] for row in result.rows[1]}
        second = Pipeline(conn.dialect)
        if first is not None:
            second.text("ROLLBACK")
        second.text("BEGIN")
        second.text("SAVEPOINT ok")
        second.sync()
        members: list[tuple[int, Transaction]] = []
        for index, tx in todo:
            if tx.transaction_id in done:
                outcomes[index] = Outcome(tx.transaction_id, already_applied=True)
                continue
            owner = len(members)
            members.append((index, tx))
            second.text("ROLLBACK TO SAVEPOINT ok", owner)
            if self.ledger:
                second.insert_rows(ledger_table, self._ledger_rows([tx]), owner=owner, ledger=True)
            self._pipeline_steps(second, tx.steps, owner)
            second.text("RELEASE SAVEPOINT ok", owner)
            second.text("SAVEPOINT ok", owner)
            second.sync()
        second.text("ROLLBACK TO SAVEPOINT ok")
        second.text("COMMIT")
        second.sync()
        second.text("SELECT pg_current_wal_insert_lsn()::text")
        result = await second.send(driver, touch)
        last = len(members) + 1
        if 0 in result.errors:
            self._raise_unless_the_transactions(result.errors[0], "at the start of a batch")
            raise DatabaseUnavailableError(f"the batch could not begin: {result.errors[0]}")
        for group, (index, tx) in enumerate(members, start=1):
            failure = result.errors.get(group)
            if failure is None:
                outcomes[index] = Outcome(tx.transaction_id, applied=True)
                continue
            self._raise_unless_the_transactions(failure, f"while applying {tx.transaction_id}")
            if result.failed_statements[group].ledger and _sqlstate_of(failure) == "23505":
                outcomes[index] = Outcome(tx.transaction_id, already_applied=True)
            else:
                outcomes[index] = Outcome(
                    tx.transaction_id, error=failure, kind=classify_failure(failure)
                )
        if last in result.errors:
            error = result.errors[last]
            self._raise_unless_the_transactions(error, "at COMMIT")
            raise _CommitRefused(error)
        lsn = _lsn_of(result)
        self._copy_outcomes(copies, outcomes)
        return lsn

    def _raise_unless_the_transactions(self, error: BaseException, where: str) -> None:
        if _sqlstate_of(error) == "42P01" and LEDGER_TABLE_NAME in str(error):
            raise ConfigurationError(
                f"the ledger table {LEDGER_TABLE_NAME} cannot be read ({error}); create it "
                "with `ccat-buffering db init` or TransactionExecutor.create_ledger()"
            ) from error
        if classify_failure(error) is FailureKind.OUTAGE:
            raise not_the_transactions_fault(error, where) from error

    def _unique(
        self, runnable: list[tuple[int, Transaction]]
    ) -> tuple[list[tuple[int, Transaction]], list[tuple[int, int]]]:
        todo: list[tuple[int, Transaction]] = []
        first_of: dict[str, int] = {}
        copies: list[tuple[int, int]] = []
        for index, tx in runnable:
            if tx.transaction_id in first_of:
                # The same transaction buffered twice (a lost reply, resubmitted):
                # it is applied once, and the copy shares the first one's fate.
                copies.append((index, first_of[tx.transaction_id]))
            else:
                first_of[tx.transaction_id] = index
                todo.append((index, tx))
        return todo, copies

    @staticmethod
    def _copy_outcomes(copies: list[tuple[int, int]], outcomes: list[Outcome]) -> None:
        for index, first in copies:
            original = outcomes[first]
            outcomes[index] = (
                Outcome(original.transaction_id, already_applied=True)
                if original.done
                else original
            )

    async def _record(self, session: AsyncSession, transactions: Sequence[Transaction]) -> None:
        if self.ledger and transactions:
            now = utc_now()
            await session.execute(
                insert(ledger_table),
                [
                    {
                        "transaction_id": tx.transaction_id,
                        "endpoint": tx.endpoint,
                        "applied_at": now,
                    }
                    for tx in transactions
                ],
            )

    async def _apply_grouped(
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
                    await self._apply_step(session, step, {}, False)
                await self._record(session, [tx for _, tx in todo])
        except Exception as exc:
            if classify_failure(exc) is FailureKind.OUTAGE:
                raise not_the_transactions_fault(exc, "during a batch") from exc
            return False  # one by one, so that the error lands on its own transaction
        for index, tx in todo:
            outcomes[index] = Outcome(tx.transaction_id, applied=True)
        return True

    async def _apply_one(self, session: AsyncSession, tx: Transaction) -> Outcome:
        """Apply one transaction in its own savepoint."""
        try:
            async with session.begin_nested():
                await self._apply(session, tx)
                await self._record(session, [tx])
        except Exception as exc:
            kind = classify_failure(exc)
            if kind is FailureKind.OUTAGE:
                raise not_the_transactions_fault(
                    exc, f"while applying {tx.transaction_id}"
                ) from exc
            return Outcome(tx.transaction_id, error=exc, kind=kind)
        return Outcome(tx.transaction_id, applied=True)

    async def _applied_ids(self, conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
        if not self.ledger or not ids:
            return set()
        column = ledger_table.c.transaction_id
        try:
            rows = await conn.execute(select(column).where(column.in_(list(ids))))
        except Exception as exc:
            missing = (
                "no such table" in str(exc)
                or "42P01" in str(getattr(exc, "orig", ""))
                or (getattr(getattr(exc, "orig", None), "sqlstate", None) == "42P01")
            )
            if classify_failure(exc) is FailureKind.OUTAGE and not missing:
                raise
            # Never blame the transactions for a missing ledger: pause instead.
            raise ConfigurationError(
                f"the ledger table {LEDGER_TABLE_NAME} cannot be read ({exc}); create it "
                "with `ccat-buffering db init` or TransactionExecutor.create_ledger()"
            ) from exc
        return {row[0] for row in rows}

    def _check_refs(self, tx: Transaction) -> None:
        models = {step.step_id: step.model for step in tx.steps}
        for step in tx.steps:
            for ref in step.refs():
                if ref.field not in self.registry.fields(models[ref.step]):
                    raise UnknownColumnError(
                        f"transaction {tx.transaction_id}: step {step.step_id!r} refers to "
                        f"{models[ref.step]}.{ref.field}, which is not a mapped field"
                    )

    async def _apply(self, session: AsyncSession, tx: Transaction) -> None:
        wanted = {ref.step for step in tx.steps for ref in step.refs()}
        produced: dict[str, Mapping[str, Any]] = {}
        for step in tx.steps:
            row = await self._apply_step(session, step, produced, step.step_id in wanted)
            if row is not None:
                produced[step.step_id] = row

    def _resolve(
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

    def _where(self, model: type[Any], key: Mapping[str, Any]) -> list[Any]:
        return [getattr(model, name) == value for name, value in key.items()]

    async def _apply_step(
        self,
        session: AsyncSession,
        step: Step,
        produced: Mapping[str, Mapping[str, Any]],
        wanted: bool,
    ) -> Mapping[str, Any] | None:
        model = self.registry.model(step.model)
        fields = sorted(self.registry.fields(step.model))
        returning = [getattr(model, name) for name in fields]
        op = step.operation
        statement: Any
        if op is Operation.CREATE:
            statement = insert(model).values(**self._resolve(step.data or {}, produced))
            if not wanted:
                await session.execute(statement)
                return None
            row = (await session.execute(statement.returning(*returning))).one()
            return dict(zip(fields, row, strict=True))
        if op is Operation.UPDATE:
            key = self._resolve(step.key or {}, produced)
            statement = (
                sa_update(model)
                .where(*self._where(model, key))
                .values(**self._resolve(step.data or {}, produced))
                .returning(*returning)
                .execution_options(synchronize_session=False)
            )
            rows = (await session.execute(statement)).all()
            if not rows:
                raise RecordNotFoundError(f"step {step.step_id!r}: no {step.model} with {key}")
            return dict(zip(fields, rows[0], strict=True))
        if op is Operation.DELETE:
            key = self._resolve(step.key or {}, produced)
            statement = (
                delete(model).where(*self._where(model, key)).returning(*returning[:1])
            ).execution_options(synchronize_session=False)
            if not (await session.execute(statement)).all():
                raise RecordNotFoundError(f"step {step.step_id!r}: no {step.model} with {key}")
            return None
        records = [self._resolve(r, produced) for r in step.records or []]
        if op is Operation.BULK_CREATE:
            await session.execute(insert(model), records)
            return None
        for i, record in enumerate(records):
            key = {name: record[name] for name in step.key_fields}
            changes = {k: v for k, v in record.items() if k not in key}
            statement = (
                sa_update(model)
                .where(*self._where(model, key))
                .values(**changes)
                .returning(*returning[:1])
                .execution_options(synchronize_session=False)
            )
            if not (await session.execute(statement)).all():
                raise RecordNotFoundError(
                    f"step {step.step_id!r} record {i}: no {step.model} with {key}"
                )
        return None
