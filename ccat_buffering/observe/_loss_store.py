"""Where a watch keeps the losses it finds: this host's disk, then the main database.

:class:`LossStore` is the keeping half of
:class:`~ccat_buffering.observe.buffer_loss.BufferWatch` (which looks and judges):
the losses not yet acknowledged, from the disk and the main database
together; their acknowledgement; and the copy of the last sighting and of
new losses to the main database, which never holds up a look.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer._sightings import Sighting, SightingFile
from ccat_buffering.logs import SiteLogger
from ccat_buffering.observe._loss_records import (
    BufferLoss,
    Mark,
    aware,
    insert_loss,
    loss_from_row,
    loss_metadata,
    losses_table,
    marks_table,
    recorded_losses,
    save_mark,
)
from ccat_buffering.write.models import utc_now

__all__ = ["COPY_WAIT", "LossStore"]

COPY_WAIT = 1.0
"""Seconds a look waits for its copy to the main database before going on without it."""

ADDED_COLUMNS = frozenset({"missing", "missing_ids"})
"""Columns of ``ccat_buffer_losses`` added after its first version: a worker adds them."""


def _loss_columns(sync: sa.Connection) -> set[str]:
    # The names a query returns, not the inspector's column reflection: the
    # operator's lean engine skips the dialect's first-connect queries, and
    # reflection needs what they learn (the server's version).
    if not sa.inspect(sync).has_table(losses_table.name):
        return set()
    query = sa.text(f"SELECT * FROM {losses_table.name} WHERE 1 = 0")
    return set(sync.execute(query).keys())


class LossStore:
    """A site's losses and last sighting, on this host's disk and in the main database.

    Args:
        engine: The main database (``None``: only the disk).
        sightings: This host's file.
        site: The site's name.
        save_every: Seconds between copies of a sighting to the main database.
        clock: Monotonic seconds.
        log: Where a failed copy is told.
    """

    def __init__(
        self,
        engine: AsyncEngine | None,
        sightings: SightingFile,
        site: str,
        *,
        save_every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        log: SiteLogger,
    ) -> None:
        self.engine = engine
        self.sightings = sightings
        self.site = site
        self.save_every = save_every
        self.clock = clock
        self.log = log
        self._saved_at = float("-inf")
        self._tables = False
        self._columns: set[str] = set()
        self._copying: asyncio.Task[None] | None = None

    async def create_tables(self) -> None:
        """Create the two tables if they do not exist; add the columns a newer version added."""
        if self.engine is None or (self._tables and self._columns >= ADDED_COLUMNS):
            return
        async with self.engine.begin() as conn:
            await conn.run_sync(loss_metadata.create_all, checkfirst=True)
            columns = await conn.run_sync(_loss_columns)
            for name in sorted(ADDED_COLUMNS - columns):
                kind = losses_table.c[name].type.compile(dialect=conn.dialect)
                await conn.execute(
                    sa.text(f"ALTER TABLE {losses_table.name} ADD COLUMN {name} {kind}")
                )
        self._tables, self._columns = True, columns | ADDED_COLUMNS

    async def _tables_exist(self) -> bool:
        if self._tables:
            return True
        if self.engine is None:
            return False
        async with self.engine.connect() as conn:
            found = await conn.run_sync(lambda sync: sa.inspect(sync).has_table(marks_table.name))
            if found:
                self._columns = await conn.run_sync(_loss_columns)
        self._tables = bool(found)
        return self._tables

    async def _mark(self) -> Mark | None:
        if self.engine is None or not await self._tables_exist():
            return None
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(marks_table).where(marks_table.c.site == self.site))
            ).first()
        if row is None:
            return None
        return Mark(row.epoch, int(row.seq), int(row.held), aware(row.seen_at))

    async def database_sighting(self) -> Sighting | None:
        """The last sighting the main database keeps (``None``: none, or it is down)."""
        try:
            row = await self._mark()
        except (SQLAlchemyError, OSError):
            return None  # the main database is down: this host has not looked before
        if row is None:
            return None
        return Sighting(row.epoch, row.seq, row.held, row.seen_at.isoformat())

    async def database_losses(self) -> list[BufferLoss]:
        """The main database's losses of this site not yet acknowledged, oldest first."""
        if self.engine is None or not await self._tables_exist():
            return []
        # A table of an older version, not yet upgraded by a worker, lacks the newer columns.
        shown = [column for column in losses_table.c if column.name in self._columns]
        query = (
            sa.select(*shown)
            .where(losses_table.c.site == self.site, losses_table.c.acknowledged_at.is_(None))
            .order_by(losses_table.c.id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            BufferLoss(
                aware(r.detected_at),
                aware(r.since),
                r.cause,
                int(r.seen_seq),
                None if r.found_seq is None else int(r.found_seq),
                int(r.held),
                missing=None if getattr(r, "missing", None) is None else int(r.missing),
                missing_ids=tuple((getattr(r, "missing_ids", None) or "").split()),
            )
            for r in rows
        ]

    async def open_losses(self, *, strict: bool = False) -> list[BufferLoss]:
        """Every loss not yet acknowledged, oldest first: the main database's and this host's.

        Args:
            strict: Raise when the main database cannot be reached; otherwise
                the losses kept on this host's disk are returned alone.
        """
        try:
            recorded = await self.database_losses()
        except (SQLAlchemyError, OSError):
            if strict:
                raise
            recorded = []
        known = {(loss.detected_at, loss.cause) for loss in recorded}
        local = [
            loss
            for loss in (
                loss_from_row(row, recorded=False)
                for row in self.sightings.read().losses
                if not row.get("in_database")
            )
            # Written to the database a moment ago, not yet marked so on disk.
            if (loss.detected_at, loss.cause) not in known
        ]
        return sorted(recorded + local, key=lambda loss: loss.detected_at)

    async def acknowledge(self) -> int:
        """Mark every open loss as seen by an operator; how many there were."""
        with self.sightings.locked() as state:
            local = [loss_from_row(row, recorded=False) for row in state.losses]
            state.losses = []
        if self.engine is None or not await self._tables_exist():
            return len(local)
        async with self.engine.begin() as conn:
            there = await recorded_losses(conn, self.site)
            result = await conn.execute(
                sa.update(losses_table)
                .where(losses_table.c.site == self.site, losses_table.c.acknowledged_at.is_(None))
                .values(acknowledged_at=utc_now())
            )
        # A loss kept on disk and already in the database is counted once.
        count = int(result.rowcount or 0)
        return count + sum((loss.detected_at, loss.cause) not in there for loss in local)

    async def copy_soon(self) -> None:
        """Copy to the main database, waiting at most :data:`COPY_WAIT` seconds for it.

        A database that does not answer (a link outage: each attempt may wait
        out the connect timeout) must not slow the looks: the copy goes on in
        the background, one at a time, and the next look does not wait again
        while it runs.
        """
        if self._copying is None or self._copying.done():
            self._copying = asyncio.create_task(self._copy_to_database(), name="buffer-copy")
            self._copying.add_done_callback(self._copied)
            await asyncio.wait({self._copying}, timeout=COPY_WAIT)

    def _copied(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            self.log.info("could not copy the buffer's sightings to the main database: %s", error)

    def cancel_copy(self) -> None:
        """Stop a copy to the main database that is still running (the watch is stopping)."""
        if self._copying is not None:
            self._copying.cancel()

    async def _copy_to_database(self) -> None:
        """Copy the sighting (every ``save_every`` s) and the new losses to the main database.

        A database that cannot be reached is tried again at the next look:
        the disk holds everything meanwhile.
        """
        if self.engine is None:
            return
        state = self.sightings.read()
        pending = [row for row in state.losses if not row.get("in_database")]
        due = state.last is not None and self.clock() - self._saved_at >= self.save_every
        if not pending and not due:
            return
        try:
            await self.create_tables()
            async with self.engine.begin() as conn:
                if state.last is not None and due:
                    await save_mark(conn, self.site, state.last)
                there = await recorded_losses(conn, self.site)
                for row in pending:
                    loss = loss_from_row(row, recorded=True)
                    if (loss.detected_at, loss.cause) in there:
                        continue  # written before; the disk was not told (a stop came between)
                    await insert_loss(conn, self.site, loss)
        except (SQLAlchemyError, OSError):
            self._saved_at = self.clock()  # not again before save_every
            return
        self._saved_at = self.clock()
        if pending:
            written = {row["detected_at"] for row in pending}
            with self.sightings.locked() as now:
                for row in now.losses:
                    if row["detected_at"] in written:
                        row["in_database"] = True
                now.losses = [row for row in now.losses if not row.get("in_database")]
