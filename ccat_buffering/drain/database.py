"""The main database: the engine the drain uses, and the applied-transactions ledger.

The **ledger** holds the id of every transaction applied, written in the
same database transaction as the transaction's own rows: a transaction whose
commit succeeded but whose acknowledgement was lost is found there on
redelivery and skipped, which is what makes the drain exactly-once. Each row
names the site that buffered it and when the transaction was created, so that
:mod:`ccat_buffering.drain.ledger_pruning` can drop, per site, the rows no
redelivery can need any more (index ``(site, created_at)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ccat_buffering.buffer.retry import FailureKind, classify_failure, describe_error, is_schema_lag
from ccat_buffering.drain._link import LinkTimeouts, connect_options, watch_engine
from ccat_buffering.drain._tls import asyncpg_tls
from ccat_buffering.errors import ConfigurationError, DatabaseUnavailableError, ExecutionError
from ccat_buffering.write.models import Transaction, utc_now

__all__ = [
    "LEDGER_TABLE_NAME",
    "applied_ids",
    "create_engine",
    "create_ledger",
    "ledger_metadata",
    "ledger_rows",
    "ledger_table",
    "not_the_transactions_fault",
    "raise_unless_the_transactions",
    "sqlstate_of",
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
    # Nullable: rows written before the ledger knew its site have neither.
    Column("site", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=True),
    Index("ix_ccat_buffering_applied_site_created", "site", "created_at"),
)
"""The applied-transactions ledger: one row per applied transaction not yet pruned."""

_ADDED_COLUMNS = {"site": "VARCHAR(200)", "created_at": "TIMESTAMP WITH TIME ZONE"}


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
            libpq's TLS parameters (``sslmode``, ``sslrootcert``, ``sslcert``,
            ``sslkey``), in the URL or ``connect_args``, work on both drivers
            (see :mod:`ccat_buffering.drain._tls`).

    Returns:
        The engine.
    """
    from sqlalchemy.engine import make_url

    timeouts = timeouts or LinkTimeouts()
    url, options = asyncpg_tls(url, options)
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


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE of a driver's error, or of the one SQLAlchemy wraps."""
    code = getattr(getattr(error, "orig", None), "sqlstate", None)
    return code if isinstance(code, str) else getattr(error, "sqlstate", None)


def _ledger_missing(error: BaseException) -> ConfigurationError:
    return ConfigurationError(
        f"the ledger table {LEDGER_TABLE_NAME} cannot be read ({error}); create it "
        "with `ccat-buffering db init` or TransactionExecutor.create_ledger()"
    )


def raise_unless_the_transactions(error: BaseException, where: str) -> None:
    """Raise what pauses the queue when ``error`` is no transaction's fault.

    Args:
        error: What the database answered.
        where: What was being done, for the message.

    Raises:
        ConfigurationError: The ledger or part of the schema is missing.
        DatabaseUnavailableError: The link or the server failed.
    """
    if sqlstate_of(error) == "42P01" and LEDGER_TABLE_NAME in str(error):
        raise _ledger_missing(error) from error
    if classify_failure(error) is FailureKind.OUTAGE:
        raise not_the_transactions_fault(error, where) from error


async def create_ledger(engine: AsyncEngine) -> None:
    """Create the ledger tables, or upgrade a ledger from before it recorded the site.

    The upgrade adds the nullable ``site`` and ``created_at`` columns and the
    pruning index; the rows already there keep ``NULL`` in both (they are
    never pruned by a site, see :mod:`ccat_buffering.drain.ledger_pruning`).
    Running it again changes nothing.

    Args:
        engine: The main database.
    """
    async with engine.begin() as conn:
        columns = await conn.run_sync(_ledger_columns)
        for name, sql_type in _ADDED_COLUMNS.items():
            if columns and name not in columns:
                table = conn.dialect.identifier_preparer.format_table(ledger_table)
                await conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))
        await conn.run_sync(ledger_metadata.create_all)
        for index in ledger_table.indexes:  # create_all skips them on an existing table
            await conn.run_sync(index.create, checkfirst=True)


def _ledger_columns(sync_conn: Any) -> set[str]:
    inspector = inspect(sync_conn)
    if not inspector.has_table(LEDGER_TABLE_NAME):
        return set()
    return {column["name"] for column in inspector.get_columns(LEDGER_TABLE_NAME)}


def ledger_rows(transactions: Sequence[Transaction], site: str | None) -> list[dict[str, Any]]:
    """The ledger rows that record ``transactions``, buffered by ``site``, as applied now."""
    now = utc_now()
    return [
        {
            "transaction_id": tx.transaction_id,
            "endpoint": tx.endpoint,
            "applied_at": now,
            "site": site or None,
            "created_at": tx.created_at,
        }
        for tx in transactions
    ]


async def applied_ids(conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` the ledger holds.

    Args:
        conn: A connection to the main database.
        ids: Transaction ids.

    Returns:
        Those of ``ids`` that were applied.

    Raises:
        ConfigurationError: The ledger table is missing (never the
            transactions' fault: the queue pauses).
    """
    if not ids:
        return set()
    column = ledger_table.c.transaction_id
    try:
        rows = await conn.execute(select(column).where(column.in_(list(ids))))
    except Exception as exc:
        missing = (
            "no such table" in str(exc)
            or "42P01" in str(getattr(exc, "orig", ""))
            or sqlstate_of(exc) == "42P01"
        )
        if classify_failure(exc) is FailureKind.OUTAGE and not missing:
            raise
        raise _ledger_missing(exc) from exc
    return {row[0] for row in rows}
