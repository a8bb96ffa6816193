"""The pipelined path of a batch: psycopg's pipeline mode, one round trip.

See :mod:`ccat_buffering.drain._pipeline` for the message and its sync points.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any, cast

from sqlalchemy import Table, insert, literal_column, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from ccat_buffering.conflicts.bulk import row_updates
from ccat_buffering.conflicts.checked import ConflictSuspected
from ccat_buffering.drain._compiled_writes import CompiledWrites
from ccat_buffering.drain._grouping import Plan
from ccat_buffering.drain._link import Watchdog
from ccat_buffering.drain._pipeline import MAX_PARAMETERS, Pipeline, PipelineResult, Statement
from ccat_buffering.drain._session_path import (
    CommitRefusedError,
    failure_outcome,
    generated_fields,
)
from ccat_buffering.drain.database import (
    ledger_rows,
    ledger_table,
    raise_unless_the_transactions,
    sqlstate_of,
)
from ccat_buffering.drain.outcome import Outcome, plain_outcome
from ccat_buffering.errors import DatabaseUnavailableError
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import Operation, Step, Transaction, utc_now
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["PipelinedPath", "PreparedBatch", "copy_outcomes", "must_match", "row_chunks"]


@dataclass
class PreparedBatch:
    """A batch checked and planned, not yet sent (see :meth:`TransactionExecutor.prepare`)."""

    transactions: tuple[Transaction, ...]
    made: list[Outcome | None]
    """One per transaction: a refusal, or ``None`` for a runnable one without an outcome yet."""
    runnable: list[tuple[int, Transaction]]
    pipelined: bool
    todo: list[tuple[int, Transaction]] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    first: Pipeline | None = None
    applied: bool = False
    """The first message applied every runnable transaction (none was stopped)."""

    @property
    def outcomes(self) -> list[Outcome]:
        """One per transaction, in order: a runnable one without its own yet is waiting.

        The waiting outcomes are made when first read: a batch that the
        first message applies whole never needs them.
        """
        made = self.made
        if not self.applied:
            for index, tx in self.runnable:
                if made[index] is None:
                    made[index] = plain_outcome(tx.transaction_id, False)
        return cast(list[Outcome], made)


def copy_outcomes(copies: list[tuple[int, int]], outcomes: list[Outcome]) -> None:
    """Give each repeat its first copy's fate: applied once, so the repeat is already applied."""
    for index, first in copies:
        original = outcomes[first]
        outcomes[index] = (
            Outcome(original.transaction_id, already_applied=True) if original.done else original
        )


def row_chunks(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split rows into runs of one column set, each small enough for one statement.

    Args:
        rows: In order.

    Returns:
        Consecutive chunks, in order.
    """
    chunks: list[list[dict[str, Any]]] = []
    last: list[dict[str, Any]] = []
    keys: Any = None
    room = 0  # rows the last chunk may hold: (rows + 1) * width <= MAX_PARAMETERS
    for row in rows:
        if len(last) < room and row.keys() == keys:
            last.append(row)
        else:
            last = [row]
            chunks.append(last)
            keys = row.keys()
            room = MAX_PARAMETERS // max(len(row), 1)
    return chunks


def must_match(statement: Any) -> Any:
    """``WITH hit AS (<statement> RETURNING 1) SELECT 1 / count(*) FROM hit``.

    Args:
        statement: An UPDATE or DELETE.

    Returns:
        A SELECT that fails (division by zero) when the statement matched no row.
    """
    hit = statement.returning(literal_column("1")).cte("hit")
    return select(literal_column("1") / literal_column("count(*)")).select_from(hit)


_LEDGER_FIELDS = ("transaction_id", "endpoint", "applied_at", "site", "created_at")
"""The fields of a ledger row, in the order :func:`ledger_rows` writes them."""


def _lsn_of(result: PipelineResult) -> LSN | None:
    rows = list(result.rows.values())
    return LSN.parse(rows[-1][0][0]) if rows else None


class PipelinedPath:
    """Builds a batch's messages and sends them through psycopg's pipeline.

    Args:
        registry: The mapped classes.
        ledger: Record and check applied transaction ids.
        dialect: The ``postgresql+psycopg`` dialect.
        site: The site recorded in the ledger rows.
    """

    def __init__(
        self, registry: ModelRegistry, ledger: bool, dialect: Dialect, site: str | None = None
    ) -> None:
        self.registry = registry
        self.ledger = ledger
        self.dialect = dialect
        self.site = site
        self.writes = CompiledWrites(registry, dialect, must_match)

    def message(
        self,
        todo: list[tuple[int, Transaction]],
        grouped: Plan,
        ledger: tuple[list[str], list[str], list[dt.datetime]] | None = None,
    ) -> Pipeline:
        """The whole batch as one message: the plan's statements, COMMIT, the LSN.

        Args:
            todo: ``(index, transaction)`` of each, in order.
            grouped: Their plan.
            ledger: Their ids, endpoints and creation times, where the caller has them.
        """
        first = Pipeline(self.dialect)
        first.text("BEGIN")
        if self.ledger:
            if ledger is None:
                txs = [tx for _, tx in todo]
                ledger = (
                    [tx.transaction_id for tx in txs],
                    [tx.endpoint for tx in txs],
                    [tx.created_at for tx in txs],
                )
            ids = ledger[0]
            # One array parameter: an IN list of a thousand costs the compiler
            # a thousand binds, and psycopg as many placeholders to convert.
            name = self.dialect.identifier_preparer.format_table(ledger_table)
            first.add(
                Statement(
                    f"SELECT transaction_id FROM {name} WHERE transaction_id = ANY($1::varchar[])",
                    [ids],
                    positional=True,
                )
            )
            # The ledger rows of ledger_rows(), as values: no dict per transaction.
            now, site = utc_now(), self.site or None
            values = list(
                chain.from_iterable(zip(ids, ledger[1], repeat(now), repeat(site), ledger[2]))
            )
            if not first.insert_values(ledger_table, _LEDGER_FIELDS, values, len(ids)):
                first.insert_rows(ledger_table, ledger_rows([tx for _, tx in todo], self.site))
        for model, chunks in grouped.chunks:
            table = self.registry.mapper(model).local_table
            for chunk in chunks:
                if not (isinstance(table, Table) and first.insert_rows(table, chunk.rows)):
                    first.sql(insert(self.registry.model(model)).values(chunk.rows))
        self.steps(first, grouped.updates, None)
        first.text("COMMIT")
        first.sync()
        first.text("SELECT pg_current_wal_insert_lsn()::text")
        return first

    def steps(self, pipeline: Pipeline, steps: Sequence[Step], owner: int | None) -> None:
        for step in steps:
            model = self.registry.model(step.model)
            op = step.operation
            computed = generated_fields(self.registry, step)
            if computed:
                # What the database computes comes back in the INSERT's own reply.
                returning = [getattr(model, name) for name in computed]
                pipeline.sql(
                    insert(model).values(**(step.data or {})).returning(*returning),
                    owner=owner,
                    returns=(step.step_id, computed),
                )
            elif op is Operation.CREATE or op is Operation.BULK_CREATE:
                records = [dict(r) for r in step.records or []] or [dict(step.data or {})]
                self.rows(pipeline, step.model, records, owner)
            else:
                # Compare-and-set: the base rides in the WHERE, and a row that
                # moved (or is gone) matches nothing, found by must_match in the
                # same round trip; the session path then decides the conflict.
                # A bulk update's rows are checked as single updates are.
                rows = row_updates(step) if op is Operation.BULK_UPDATE else [step]
                for row in rows:
                    moved = ConflictSuspected(f"step {row.step_id!r}: {row.model} {row.key} moved")
                    pipeline.add(self.writes.statement(row, owner, moved))

    def rows(
        self, pipeline: Pipeline, model: str, rows: list[dict[str, Any]], owner: int | None
    ) -> None:
        table = self.registry.mapper(model).local_table
        for chunk in row_chunks(rows):
            if not (isinstance(table, Table) and pipeline.insert_rows(table, chunk, owner=owner)):
                pipeline.sql(insert(self.registry.model(model)).values(chunk), owner=owner)

    async def run(
        self,
        conn: AsyncConnection,
        dog: Watchdog | None,
        batch: PreparedBatch,
    ) -> LSN | None:
        """The batch in one round trip (two when a transaction in it fails)."""
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        touch = None if dog is None else dog.touch
        todo, copies = batch.todo, batch.copies
        done: set[str] = set()
        lsn: LSN | None = None
        first = batch.first
        if first is not None:
            result = await first.send(driver, touch)
            if not result.errors:
                made = batch.made  # every runnable one gets its outcome here: none waits
                for index, tx in todo:
                    made[index] = plain_outcome(tx.transaction_id, True)
                copy_outcomes(copies, cast(list[Outcome], made))
                batch.applied = True
                return _lsn_of(result)
            error = result.errors[0]
            raise_unless_the_transactions(error, "during a batch")
            if result.failed_statements[0].sql == "COMMIT":
                raise CommitRefusedError(error)
            if self.ledger and 1 in result.rows:
                done = {row[0] for row in result.rows[1]}
        outcomes = batch.outcomes
        second = Pipeline(self.dialect)
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
            if self.ledger:
                second.insert_rows(
                    ledger_table, ledger_rows([tx], self.site), owner=owner, ledger=True
                )
            self.steps(second, tx.steps, owner)
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
            raise_unless_the_transactions(result.errors[0], "at the start of a batch")
            raise DatabaseUnavailableError(f"the batch could not begin: {result.errors[0]}")
        for group, (index, tx) in enumerate(members, start=1):
            failure = result.errors.get(group)
            if failure is None:
                generated = result.returned.get(group - 1, {})
                outcomes[index] = Outcome(tx.transaction_id, applied=True, generated=generated)
                continue
            # The first failure aborted the database transaction: every later
            # group failed on that (25P02) and stays unapplied, waiting.
            raise_unless_the_transactions(failure, f"while applying {tx.transaction_id}")
            if result.failed_statements[group].ledger and sqlstate_of(failure) == "23505":
                outcomes[index] = Outcome(tx.transaction_id, already_applied=True)
            else:
                outcomes[index] = failure_outcome(tx, failure, self.registry)
            break
        if last in result.errors:
            error = result.errors[last]
            raise_unless_the_transactions(error, "at COMMIT")
            raise CommitRefusedError(error)
        lsn = _lsn_of(result)
        copy_outcomes(copies, outcomes)
        return lsn
