"""The ledger's life: which rows no redelivery can need, and pruning them in small batches.

A ledger row exists for one purpose: to make a *second delivery* of an applied
transaction a no-op. A transaction can only be delivered again while its entry
is somewhere the drain can claim it from: waiting in the buffer (a redelivery
after a lost acknowledgement goes back there), in flight, in the dead letters
(a replay), or in a copy of the buffer that may be restored (a backup). So a
row can go once no such entry can exist. Per site, the **horizon** is

    ``min(now - ledger_retention, held_since - SKEW)``

where ``held_since`` is the creation time of the oldest transaction the site
still holds (the first status of every state but committed and the terminal
ones, and every dead letter), ``ledger_retention`` a floor set by the operator (how old a buffer
backup may be when it is restored), and :data:`SKEW` allows for the clocks of
the site's processes. Rows of the site whose transaction was created before the
horizon are deleted; nothing of another site, and no row without a site (from
before the ledger recorded it), is touched.

The horizon is recorded per site (table ``ccat_buffering_ledger_horizons``)
**before** any row goes, and only ever moves forward. The drain refuses a
transaction created before its site's recorded horizon instead of trusting the
ledger's silence about it (:meth:`TransactionExecutor.execute_batch
<ccat_buffering.drain.executor.TransactionExecutor.execute_batch>` dead-letters it
with :class:`~ccat_buffering.errors.LedgerHorizonError`): a buffer restored
from a backup older than the retention cannot apply anything twice, it parks
what the ledger can no longer vouch for.

Pruning deletes at most ``batch_size`` rows per statement, each in its own
short transaction, and on PostgreSQL skips rows another transaction holds
(``FOR UPDATE SKIP LOCKED``): the drain never waits on it. It touches only rows
below the horizon, which no batch of the drain reads or writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, String, Table, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ccat_buffering.buffer.protocols import Backend
from ccat_buffering.drain._stopping import raise_if_cancelling
from ccat_buffering.drain.database import ledger_metadata, ledger_table
from ccat_buffering.errors import ConfigurationError
from ccat_buffering.logs import SiteLogger
from ccat_buffering.write.status import TransactionState, utc_now

__all__ = [
    "SKEW",
    "PruneReport",
    "held_since",
    "horizons_table",
    "prune_ledger",
    "prune_periodically",
    "prune_site",
    "recorded_horizon",
    "safe_horizon",
]

SKEW = dt.timedelta(minutes=5)
"""Allowance for the clocks of a site's processes (creation times come from the services)."""

horizons_table = Table(
    "ccat_buffering_ledger_horizons",
    ledger_metadata,
    Column("site", String(200), primary_key=True),
    Column("pruned_before", DateTime(timezone=True), nullable=False),
    Column("pruned_at", DateTime(timezone=True), nullable=False),
    Column("rows_pruned", BigInteger, nullable=False),
)
"""Per site: transactions created before ``pruned_before`` may have lost their ledger row."""

_LETTER_PAGE = 500


@dataclass(frozen=True)
class PruneReport:
    """What one pruning run did (or, dry, would do).

    Attributes:
        site: The site whose rows were pruned.
        horizon: Rows of transactions created before it were pruned.
        held_since: Creation time of the oldest transaction the site holds.
        rows: Rows deleted (or that would be, on a dry run).
        batches: Statements it took.
        remaining: Rows of the site left in the ledger.
        seconds: How long it took.
        dry_run: Nothing was deleted or recorded.
    """

    site: str
    horizon: dt.datetime
    held_since: dt.datetime | None
    rows: int
    batches: int
    remaining: int
    seconds: float
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        data = asdict(self)
        data["horizon"] = self.horizon.isoformat()
        data["held_since"] = self.held_since.isoformat() if self.held_since else None
        return data


def _created_at(payload: str) -> dt.datetime | None:
    try:
        value = json.loads(payload).get("created_at")
        created = dt.datetime.fromisoformat(value)
    except (ValueError, TypeError, AttributeError):
        return None  # unreadable: it can never be applied, so it needs no row
    return created if created.tzinfo else created.replace(tzinfo=dt.UTC)


async def held_since(backend: Backend) -> dt.datetime | None:
    """Creation time of the oldest transaction ``backend``'s site still holds.

    Reads the first status of every state in which the buffer still holds
    the entry (statuses are listed in the order they were put) and every dead
    letter; no key scan, and a read per page of dead letters.

    Args:
        backend: The site's buffer.

    Returns:
        The oldest creation time, or ``None`` when the site holds nothing.
    """
    oldest: list[dt.datetime] = []
    for state in TransactionState:
        # A committed status is put in the same atomic step as the entry's
        # acknowledgement: a transaction in that state is no longer held.
        if state.is_terminal or state is TransactionState.COMMITTED:
            continue
        ids = await backend.status.ids(state, limit=1)
        oldest += [s.created_at for s in await backend.status.get_many(ids) if s is not None]
    offset = 0
    while True:
        letters = await backend.dead_letters.list(offset, _LETTER_PAGE)
        oldest += [c for c in (_created_at(letter.payload) for letter in letters) if c]
        if len(letters) < _LETTER_PAGE:
            break
        offset += len(letters)
    return min(oldest) if oldest else None


def safe_horizon(now: dt.datetime, retention: float, held: dt.datetime | None) -> dt.datetime:
    """The pruning horizon: the retention floor, or older if the site holds older.

    Args:
        now: The current time.
        retention: ``ledger_retention`` in seconds.
        held: What :func:`held_since` returned.

    Returns:
        Rows of transactions created before this may go.
    """
    floor = now - dt.timedelta(seconds=retention)
    return floor if held is None else min(floor, held - SKEW)


async def recorded_horizon(conn: AsyncConnection, site: str) -> dt.datetime | None:
    """The horizon recorded for ``site`` (``None`` if it was never pruned)."""
    column = horizons_table.c.pruned_before
    value = (await conn.execute(select(column).where(horizons_table.c.site == site))).scalar()
    if value is not None and value.tzinfo is None:  # SQLite returns naive times
        value = value.replace(tzinfo=dt.UTC)
    return value


async def _record(conn: AsyncConnection, site: str, horizon: dt.datetime) -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = conn.dialect.name
    if dialect not in ("postgresql", "sqlite"):  # pragma: no cover - the ledger's two
        raise ConfigurationError(f"pruning the ledger on {dialect} is not supported")
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = utc_now()
    statement = insert(horizons_table).values(
        site=site, pruned_before=horizon, pruned_at=now, rows_pruned=0
    )
    current = horizons_table.c.pruned_before
    # Never backwards: a run with a shorter retention must not re-admit what went.
    later = case((current > statement.excluded.pruned_before, current), else_=horizon)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["site"], set_={"pruned_before": later, "pruned_at": now}
        )
    )


async def _count(conn: AsyncConnection, site: str, before: dt.datetime | None) -> int:
    query = select(func.count()).select_from(ledger_table).where(ledger_table.c.site == site)
    if before is not None:
        query = query.where(ledger_table.c.created_at < before)
    return int((await conn.execute(query)).scalar_one())


async def prune_ledger(
    engine: AsyncEngine,
    site: str,
    horizon: dt.datetime,
    *,
    held: dt.datetime | None = None,
    batch_size: int = 5000,
    pause: float = 0.0,
    dry_run: bool = False,
) -> PruneReport:
    """Delete ``site``'s ledger rows of transactions created before ``horizon``.

    Records the horizon first (so the drain refuses anything older from then
    on), then deletes ``batch_size`` rows per statement, each statement its
    own transaction, ``pause`` seconds apart.

    Args:
        engine: The main database.
        site: The site whose rows go.
        horizon: From :func:`safe_horizon`.
        held: What :func:`held_since` returned, for the report.
        batch_size: Rows per statement.
        pause: Seconds between statements (to leave the link to the drain).
        dry_run: Count what would go; delete and record nothing.

    Returns:
        What was done.
    """
    started = time.monotonic()
    rows = batches = 0
    if dry_run:
        async with engine.connect() as conn:
            rows = await _count(conn, site, horizon)
            remaining = await _count(conn, site, None) - rows
        return PruneReport(
            site, horizon, held, rows, 0, remaining, time.monotonic() - started, True
        )
    async with engine.begin() as conn:
        await _record(conn, site, horizon)
    key = ledger_table.c.transaction_id
    while True:
        async with engine.begin() as conn:
            chosen = (
                select(key)
                .where(ledger_table.c.site == site, ledger_table.c.created_at < horizon)
                .limit(batch_size)
            )
            if conn.dialect.name == "postgresql":
                chosen = chosen.with_for_update(skip_locked=True)
            result = await conn.execute(
                ledger_table.delete().where(key.in_(chosen.scalar_subquery()))
            )
            deleted = max(result.rowcount, 0)
        rows += deleted
        batches += 1
        if deleted < batch_size:
            break
        if pause:
            await asyncio.sleep(pause)
    async with engine.begin() as conn:
        await conn.execute(
            horizons_table.update()
            .where(horizons_table.c.site == site)
            .values(rows_pruned=horizons_table.c.rows_pruned + rows)
        )
        remaining = await _count(conn, site, None)
    return PruneReport(
        site, horizon, held, rows, batches, remaining, time.monotonic() - started, False
    )


async def prune_site(
    engine: AsyncEngine,
    backend: Backend,
    *,
    retention: float,
    batch_size: int = 5000,
    pause: float = 0.0,
    dry_run: bool = False,
) -> PruneReport:
    """Prune the ledger rows of ``backend``'s site up to its safe horizon.

    Args:
        engine: The main database.
        backend: The site's buffer, asked what it still holds.
        retention: ``ledger_retention`` in seconds.
        batch_size: Rows per statement.
        pause: Seconds between statements.
        dry_run: Count only.

    Returns:
        What was done.
    """
    held = await held_since(backend)
    horizon = safe_horizon(utc_now(), retention, held)
    return await prune_ledger(
        engine,
        backend.site,
        horizon,
        held=held,
        batch_size=batch_size,
        pause=pause,
        dry_run=dry_run,
    )


async def prune_periodically(
    engine: AsyncEngine,
    backend: Backend,
    *,
    retention: float,
    interval: float,
    batch_size: int = 5000,
) -> None:
    """Prune the site's ledger a minute after start, then every ``interval`` seconds.

    The first run waits so that a starting worker drains first (and a short
    run never prunes). A failed run (the main database down, the buffer
    unreachable) is logged and tried again at the next interval; nothing
    depends on it succeeding.
    """
    log = SiteLogger(__name__, backend.site)
    await asyncio.sleep(min(interval, 60.0))
    while True:
        try:
            report = await prune_site(
                engine, backend, retention=retention, batch_size=batch_size, pause=0.01
            )
        except Exception as exc:
            raise_if_cancelling()  # a driver may turn the cancellation into another error
            log.warning("ledger pruning failed, next try in %.0f s: %s", interval, exc)
        else:
            if report.rows:
                log.info(
                    "pruned %d ledger rows created before %s (%d left)",
                    report.rows,
                    report.horizon.isoformat(),
                    report.remaining,
                )
        await asyncio.sleep(interval)
