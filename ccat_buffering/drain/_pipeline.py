"""A whole batch in one round trip: PostgreSQL's pipeline mode, through psycopg 3.

Over a 200-500 ms link a batch costs its round trips, not its statements. In
pipeline mode the client sends every statement of a batch at once and reads
the results as they come, so a batch costs **one** round trip however many
statements it holds. Statements are split by *sync points*: an error makes
the server skip what follows up to the next sync, and then go on.

The common path is one round trip::

    BEGIN; ledger rows; one multi-row INSERT per table; the updates; COMMIT  SYNC
    SELECT pg_current_wal_insert_lsn()                                       SYNC

When anything in it fails, the batch is sent again with one sync point per
transaction, still in one round trip, and a savepoint named ``ok`` that
always marks the state after the last transaction that succeeded::

    BEGIN; SAVEPOINT ok                                                      SYNC
    ledger row; steps of transaction 1; RELEASE ok; SAVEPOINT ok             SYNC
    ledger row; steps of transaction 2; RELEASE ok; SAVEPOINT ok             SYNC
    ...
    ROLLBACK TO ok; COMMIT                                                   SYNC
    SELECT pg_current_wal_insert_lsn()                                       SYNC

A transaction that fails is skipped up to its sync point, so ``RELEASE ok;
SAVEPOINT ok`` never run for it, and the database transaction is left
aborted: every later transaction's group fails at once (``25P02``) and applies
nothing, and the final ``ROLLBACK TO ok`` returns to the state after the last
transaction before the failure, which ``COMMIT`` then makes durable. So the
batch commits exactly the prefix before its first failure, and the failed
transaction can be retried before anything that follows it (buffer order
holds through failures). The ledger row comes first, so a transaction another
holder committed meanwhile fails on the ledger's key and is reported as
applied; the executor then sends what followed it again.

An UPDATE or DELETE that matches no row must fail its transaction as the
one-by-one path does, without a round trip to look at a row count: it runs
as ``WITH hit AS (... RETURNING 1) SELECT 1 / count(*) FROM hit``, which
divides by zero when nothing matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Column, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["MAX_PARAMETERS", "Pipeline", "PipelineResult", "Statement"]

_DIVISION_BY_ZERO = "22012"
# Parameters per statement stay far below the protocol's 65,535.
MAX_PARAMETERS = 30_000


@dataclass
class Statement:
    """One statement of a pipeline, and whose it is.

    Attributes:
        sql: The SQL text with ``%(name)s`` placeholders (psycopg's style).
        params: The processed parameter values.
        owner: The index of the transaction it belongs to, or ``None``.
        missing: The error to report when it divides by zero (a row not found).
        ledger: It is the transaction's ledger row.
    """

    sql: str
    params: Mapping[str, Any] | Sequence[Any] | None = None
    owner: int | None = None
    missing: BaseException | None = None
    ledger: bool = False
    positional: bool = False
    """``sql`` has ``$1``-style placeholders and ``params`` is a sequence."""
    returns: tuple[str, tuple[str, ...]] | None = None
    """``(step id, fields)`` of the values its ``RETURNING`` gives back (a create's)."""


@dataclass
class PipelineResult:
    """What came back from one pipeline.

    Attributes:
        errors: The first error of each sync group that failed, by group index.
        failed_statements: The statements that raised those errors, by group.
        rows: The rows of each statement that returned any, by statement index.
        round_trips: How many times the client waited for the server (1).
        returned: What statements with ``returns`` gave back, loaded as
            Python values: by owner, then step id, then field.
    """

    errors: dict[int, BaseException] = field(default_factory=dict)
    failed_statements: dict[int, Statement] = field(default_factory=dict)
    rows: dict[int, list[tuple[Any, ...]]] = field(default_factory=dict)
    round_trips: int = 1
    returned: dict[int | None, dict[str, dict[str, Any]]] = field(default_factory=dict)


class Pipeline:
    """Statements and sync points, compiled once and sent in one write.

    Args:
        dialect: The ``postgresql+psycopg`` dialect (compiles the statements).
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.groups: list[list[Statement]] = [[]]

    def insert_rows(
        self,
        table: Table,
        rows: Sequence[Mapping[str, Any]],
        *,
        owner: int | None = None,
        ledger: bool = False,
    ) -> bool:
        """Append multi-row INSERTs of ``rows`` (one column set), written without the compiler.

        SQLAlchemy's compiler costs about a millisecond per row of a
        multi-row INSERT; this writes ``INSERT ... VALUES ($1, $2), ...`` and
        runs each value through its column type's bind processor instead.

        Args:
            table: The table.
            rows: Its rows, each with the same keys (column keys).
            owner: The transaction they belong to.
            ledger: They are ledger rows.

        Returns:
            ``False`` when the rows need the compiler (a key that is not a
            column, or a column with a Python-side default missing from them).
        """
        if not rows:
            return True
        keys = tuple(rows[0])
        shape = _shape(table, keys, self.dialect)
        if shape is None:
            return False
        width = len(keys)
        per_statement = max(1, MAX_PARAMETERS // max(width, 1))
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            if shape.plain:  # the common case: one comprehension, no call per value
                params = [row[key] for row in chunk for key in keys]
            else:
                params = [
                    row[key] if process is None else process(row[key])
                    for row in chunk
                    for key, process in zip(keys, shape.processors, strict=True)
                ]
            sql = shape.head + _values(width, len(chunk))
            self.add(Statement(sql, params, owner, ledger=ledger, positional=True))
        return True

    def insert_values(
        self,
        table: Table,
        keys: tuple[str, ...],
        values: list[Any],
        rows: int,
        *,
        owner: int | None = None,
        ledger: bool = False,
    ) -> bool:
        """Append multi-row INSERTs of rows given as their values, one row after the other.

        What :meth:`insert_rows` sends for ``rows`` rows of the fields ``keys``
        (in that order) whose values, in that order, are ``values``: without
        a dict per row, nor a lookup per value.

        Returns:
            ``False``, appending nothing, when a column type processes its
            values or the rows need the compiler (:meth:`insert_rows` then).
        """
        shape = _shape(table, keys, self.dialect)
        if shape is None or not shape.plain:
            return False
        if not rows:
            return True
        width = len(keys)
        per_statement = max(1, MAX_PARAMETERS // max(width, 1))
        if rows <= per_statement:
            sql = shape.head + _values(width, rows)
            self.add(Statement(sql, values, owner, ledger=ledger, positional=True))
            return True
        for start in range(0, rows, per_statement):
            count = min(per_statement, rows - start)
            params = values[start * width : (start + count) * width]
            sql = shape.head + _values(width, count)
            self.add(Statement(sql, params, owner, ledger=ledger, positional=True))
        return True

    def add(self, statement: Statement) -> None:
        """Append ``statement`` to the current sync group."""
        self.groups[-1].append(statement)

    def sql(
        self,
        clause: ClauseElement,
        *,
        owner: int | None = None,
        missing: BaseException | None = None,
        ledger: bool = False,
        returns: tuple[str, tuple[str, ...]] | None = None,
    ) -> None:
        """Compile an SQLAlchemy statement and append it.

        Args:
            clause: The statement.
            owner: The transaction it belongs to.
            missing: The error for "no row matched" (UPDATE and DELETE).
            ledger: It is a ledger row.
            returns: ``(step id, fields)`` its ``RETURNING`` gives, in order.
        """
        compiled = cast(
            SQLCompiler,
            clause.compile(dialect=self.dialect, compile_kwargs={"render_postcompile": True}),
        )
        params = dict(compiled.construct_params())
        # SQLAlchemy's own type processing (enums, JSON, ...), as its execute would do.
        processors: Mapping[str, Any] = compiled._bind_processors
        for name, process in processors.items():
            if name in params and callable(process):
                params[name] = process(params[name])
        self.add(Statement(compiled.string, params, owner, missing, ledger, returns=returns))

    def text(self, sql: str, owner: int | None = None) -> None:
        """Append a statement without parameters (BEGIN, SAVEPOINT, COMMIT)."""
        self.add(Statement(sql, None, owner))

    def sync(self) -> None:
        """End the current sync group: an error skips no further than here."""
        self.groups.append([])

    async def send(self, driver_connection: Any, touch: Any = None) -> PipelineResult:
        """Send every statement, read every result, in one round trip.

        Args:
            driver_connection: A psycopg ``AsyncConnection`` with no open transaction.
            touch: Called whenever the server answers (pushes a watchdog's deadline).

        Returns:
            The errors and rows.

        Raises:
            psycopg.OperationalError: The connection broke; the caller must
                discard it.
        """
        from psycopg import errors as pg_errors
        from psycopg import pq
        from psycopg._queries import PostgresQuery
        from psycopg.adapt import PyFormat, Transformer

        pgconn = driver_connection.pgconn
        transformer = Transformer(driver_connection)
        groups = [g for g in self.groups if g]
        expected: list[tuple[int, int, Statement]] = []
        pgconn.enter_pipeline_mode()
        blocking = pgconn.nonblocking
        pgconn.nonblocking = 1
        try:
            for g, group in enumerate(groups):
                for statement in group:
                    if statement.positional:
                        values = list(statement.params or ())
                        dumped = transformer.dump_sequence(values, [PyFormat.AUTO] * len(values))
                        pgconn.send_query_params(
                            statement.sql.encode(),
                            dumped,
                            param_types=transformer.types,
                            param_formats=transformer.formats,
                        )
                    else:
                        query = PostgresQuery(transformer)
                        query.convert(statement.sql, statement.params)
                        pgconn.send_query_params(
                            query.query,
                            query.params,
                            param_types=query.types,
                            param_formats=query.formats,
                        )
                    expected.append((g, len(expected), statement))
                pgconn.pipeline_sync()
            result = PipelineResult()
            # Returned values are loaded as psycopg loads a row (types by OID).
            loader = Transformer(driver_connection)
            await _communicate(pgconn, len(groups), expected, result, touch, pq, pg_errors, loader)
        finally:
            with contextlib.suppress(Exception):
                pgconn.exit_pipeline_mode()
            pgconn.nonblocking = blocking
        return result


_PROCESSORS: dict[tuple[int, str], Any] = {}


@dataclass(frozen=True)
class _Shape:
    """A multi-row INSERT's columns: its head, and each column's bind processor."""

    head: str
    processors: list[Any]
    plain: bool
    """No column processes its values."""


_SHAPES: dict[tuple[Table, tuple[str, ...], Dialect], _Shape | None] = {}


def _shape(table: Table, keys: tuple[str, ...], dialect: Dialect) -> _Shape | None:
    """The INSERT of ``keys`` into ``table``; ``None`` when the rows need the compiler.

    That is when a key is not a column, or a column with a Python-side default
    is missing from them. Worked out once per column set: batches repeat them.
    """
    found = _SHAPES.get((table, keys, dialect), _UNKNOWN)
    if found is not _UNKNOWN:
        return found  # type: ignore[return-value]
    columns = [table.c[key] for key in keys if key in table.c]
    shape: _Shape | None = None
    if len(columns) == len(keys) and not any(
        c.default is not None and c.key not in keys for c in table.columns
    ):
        processors = _processors(columns, dialect)
        quote = dialect.identifier_preparer
        head = (
            f"INSERT INTO {quote.format_table(table)} "
            f"({', '.join(quote.quote(c.name) for c in columns)}) VALUES "
        )
        shape = _Shape(head, processors, all(process is None for process in processors))
    if len(_SHAPES) < 4096:  # the column sets of a schema's tables: a few each
        _SHAPES[(table, keys, dialect)] = shape
    return shape


_UNKNOWN = object()


@functools.lru_cache(maxsize=64)
def _values(width: int, rows: int) -> str:
    """``($1, $2), ($3, $4)`` for ``rows`` rows of ``width``: batches repeat their shapes."""
    numbers = iter(range(1, width * rows + 1))
    row = "(" + ", ".join(["${}"] * width) + ")"
    return ", ".join(row.format(*itertools.islice(numbers, width)) for _ in range(rows))


def _processors(columns: Sequence[Column[Any]], dialect: Dialect) -> list[Any]:
    found = []
    for column in columns:
        key = (id(column), dialect.name)
        if key not in _PROCESSORS:
            impl = column.type.dialect_impl(dialect)
            _PROCESSORS[key] = impl.bind_processor(dialect)
        found.append(_PROCESSORS[key])
    return found


async def _wait(fd: int, writing: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    if writing:
        loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
        if writing:
            loop.remove_writer(fd)


async def _communicate(
    pgconn: Any,
    syncs: int,
    expected: list[tuple[int, int, Statement]],
    result: PipelineResult,
    touch: Any,
    pq: Any,
    pg_errors: Any,
    loader: Any,
) -> None:
    """Flush what is queued and read results until every sync point has answered."""
    status = pq.ExecStatus
    fd = pgconn.socket
    seen_syncs = 0
    position = 0  # the next statement whose result is due
    pending: list[Any] = []
    while seen_syncs < syncs:
        writing = pgconn.flush() == 1
        await _wait(fd, writing)
        pgconn.consume_input()
        if touch is not None:
            touch()
        while not pgconn.is_busy():
            res = pgconn.get_result()
            if res is None:
                if pending:
                    group, index, statement = expected[position]
                    _settle(pending, group, index, statement, result, status, pg_errors, loader)
                    position += 1
                    pending = []
                    continue
                break
            if res.status == status.PIPELINE_SYNC:
                seen_syncs += 1
                if seen_syncs == syncs:
                    break
                continue
            pending.append(res)


def _settle(
    results: list[Any],
    group: int,
    index: int,
    statement: Statement,
    out: PipelineResult,
    status: Any,
    pg_errors: Any,
    loader: Any,
) -> None:
    res = results[-1]
    if res.status == status.FATAL_ERROR:
        if group in out.errors:
            return
        error: BaseException = pg_errors.error_from_result(res, encoding="utf-8")
        if statement.missing is not None and getattr(error, "sqlstate", None) == _DIVISION_BY_ZERO:
            error = statement.missing
        else:
            error = _as_sqlalchemy(error, statement.sql)
        out.errors[group] = error
        out.failed_statements[group] = statement
    elif res.status == status.TUPLES_OK and res.ntuples and statement.returns is not None:
        step_id, fields = statement.returns
        loader.set_pgresult(res)
        row = loader.load_row(0, tuple)
        out.returned.setdefault(statement.owner, {})[step_id] = dict(zip(fields, row, strict=True))
    elif res.status == status.TUPLES_OK and res.ntuples:
        out.rows[index] = [
            tuple(
                None if (v := res.get_value(r, c)) is None else bytes(v).decode()
                for c in range(res.nfields)
            )
            for r in range(res.ntuples)
        ]


def _as_sqlalchemy(error: BaseException, sql: str) -> BaseException:
    """Wrap a psycopg error as SQLAlchemy's execute would (the same classes and text)."""
    import psycopg
    from sqlalchemy import exc as sa_exc

    if not isinstance(error, psycopg.Error):
        return error
    return sa_exc.DBAPIError.instance(sql, None, error, psycopg.Error)
