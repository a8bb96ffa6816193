"""Telling that the buffer lost state it held, from what was last seen of it.

A buffer that restarts without persistence, is flushed, or fails over to a
replica that was behind forgets what it held, and forgets that it held it:
nothing in it can tell. So the buffer carries a marker (an epoch, stamped
once, and its sequence counter, which only grows while the buffer keeps its
state), and a :class:`BufferWatch` keeps the marker's last sighting, with
where the server stood in its replication history, on the worker's disk
(:mod:`ccat_buffering._sightings`; copied to the main database's
``ccat_buffer_marks`` when it answers). A sighting that does not follow from
the last one is a loss (:func:`~ccat_buffering._sightings.judge`):

* no marker: a restart without persistence, or a flush;
* another marker: the buffer was replaced by another one;
* a failover to a replica that forked from its old master before the last
  sighting, or a replaced master seen taking writes past the fork;
* the same history with a lower counter: a restore from an older copy.

A failover to a replica that holds everything seen is not a loss.

The worker records each loss in ``ccat_buffer_losses`` (when it was found,
when the buffer was last seen whole, the sequence numbers that may be gone and
how many unfinished transactions the buffer held then), logs it at ERROR, and
stamps a new epoch so that work goes on. ``status`` and ``inspect`` report
every loss not yet acknowledged (and one they find themselves before a worker
has recorded it), until :meth:`BufferWatch.acknowledge` is called.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering._loss_records import (
    BufferLoss,
    Mark,
    aware,
    insert_loss,
    loss_from_row,
    loss_metadata,
    loss_row,
    losses_table,
    marks_table,
    recorded_losses,
    save_mark,
)
from ccat_buffering._sightings import (
    HISTORY,
    BufferOrigin,
    Judgement,
    Sighting,
    SightingFile,
    SightingState,
    default_state_dir,
    judge,
    new_epoch_after,
)
from ccat_buffering._stopping import raise_if_cancelling
from ccat_buffering.errors import BufferingError
from ccat_buffering.logs import SiteLogger
from ccat_buffering.models import utc_now
from ccat_buffering.protocols import Backend, SupportsBufferMarker, SupportsBufferOrigin

__all__ = ["COPY_WAIT", "BufferLoss", "BufferWatch", "loss_metadata", "watch_buffer"]

COPY_WAIT = 1.0
"""Seconds a look waits for its copy to the main database before going on without it."""


def _new_epoch() -> str:
    return f"{uuid.uuid4().hex[:16]} {int(time.time() * 1000)}"


class BufferWatch:
    """Compares a site's buffer with what was last seen of it.

    Sightings are kept on this host's disk (:class:`~ccat_buffering._sightings.SightingFile`,
    written at every look at which something moved, whatever the main
    database is doing) and copied to the main database when it answers (for
    ``status`` on other hosts, and a worker on a new host). A loss found is
    kept on disk at once and written to the main database when it answers.

    Args:
        engine: The main database (``None``: only the disk).
        backend: The site's stores; without
            :class:`~ccat_buffering.protocols.SupportsBufferMarker` (the memory
            backend, which keeps nothing across a restart by design) nothing is checked.
        state_dir: Where this host keeps the sightings (default:
            :func:`~ccat_buffering._sightings.default_state_dir`).
        save_every: Seconds between copies of a sighting to the main database.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        engine: AsyncEngine | None,
        backend: Backend,
        *,
        state_dir: Path | None = None,
        save_every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.backend = backend
        self.site = backend.site
        self.sightings = SightingFile(state_dir or default_state_dir(), backend.site)
        self.save_every = save_every
        self.clock = clock
        self.log = SiteLogger(__name__, backend.site)
        self._saved_at = float("-inf")
        self._tables = False
        self._copying: asyncio.Task[None] | None = None

    @property
    def supported(self) -> bool:
        """Whether the backend carries a marker to check."""
        return isinstance(self.backend, SupportsBufferMarker)

    async def create_tables(self) -> None:
        """Create the two tables if they do not exist."""
        if self.engine is None:
            return
        async with self.engine.begin() as conn:
            await conn.run_sync(loss_metadata.create_all, checkfirst=True)
        self._tables = True

    async def _tables_exist(self) -> bool:
        if self._tables:
            return True
        if self.engine is None:
            return False
        async with self.engine.connect() as conn:
            found = await conn.run_sync(lambda sync: sa.inspect(sync).has_table(marks_table.name))
        self._tables = bool(found)
        return self._tables

    async def _row(self) -> Mark | None:
        if self.engine is None or not await self._tables_exist():
            return None
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(marks_table).where(marks_table.c.site == self.site))
            ).first()
        if row is None:
            return None
        return Mark(row.epoch, int(row.seq), int(row.held), aware(row.seen_at))

    async def _database_losses(self) -> list[BufferLoss]:
        if self.engine is None or not await self._tables_exist():
            return []
        query = (
            sa.select(losses_table)
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
            recorded = await self._database_losses()
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
        """Mark every open loss as seen by an operator.

        Returns:
            How many there were.
        """
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

    async def _held(self) -> int:
        stats = await self.backend.buffer.stats()
        return stats.depth + stats.in_flight

    async def _origin(self) -> BufferOrigin | None:
        if isinstance(self.backend, SupportsBufferOrigin):
            return await self.backend.buffer_origin()
        if isinstance(self.backend, SupportsBufferMarker):
            epoch, seq = await self.backend.buffer_mark()
            return BufferOrigin(epoch, seq)
        return None

    async def _database_sighting(self) -> Sighting | None:
        try:
            row = await self._row()
        except (SQLAlchemyError, OSError):
            return None  # the main database is down: this host has not looked before
        if row is None:
            return None
        return Sighting(row.epoch, row.seq, row.held, row.seen_at.isoformat())

    async def check(self, *, record: bool = True) -> list[BufferLoss]:
        """Look at the buffer; keep the sighting, and record a loss if it does not follow.

        Args:
            record: Keep the sighting, record a loss and stamp a new marker
                (the worker). ``False`` changes nothing (``status``,
                ``inspect``): a loss found then is returned, not recorded.

        Returns:
            The losses not yet acknowledged (with one just found).
        """
        origin = await self._origin()
        if origin is None:
            return []
        held = await self._held()
        stored = self.sightings.read()
        fallback = None if stored.exists else await self._database_sighting()
        if not record:
            last = stored.last or fallback
            losses = await self.open_losses(strict=True)
            if last is not None and origin.history not in stored.superseded:
                found = judge(last, stored.history, origin)
                if found is not None:
                    losses.append(self._loss(found, last, recorded=False))
            return losses
        now = utc_now()
        found_loss: BufferLoss | None = None
        stamp_after: str | None = None
        with self.sightings.locked() as state:
            if not state.exists and fallback is not None:
                state.last = fallback
            found_loss, stamp_after = self._look(state, origin, held, now)
        if found_loss is not None:
            self.log.error("%s", found_loss.describe())
        if stamp_after is not None:
            await self._stamp(stamp_after)
            # Keep the new marker as the sighting at once: a loss after this is told too.
            origin = await self._origin()
            if origin is not None and origin.epoch is not None:
                with self.sightings.locked() as state:
                    self._look(state, origin, held, now)
        await self._copy_soon()
        return await self.open_losses()

    def _look(
        self, state: SightingState, origin: BufferOrigin, held: int, now: dt.datetime
    ) -> tuple[BufferLoss | None, str | None]:
        """Judge one look under the file's lock; the loss found and the epoch to follow."""
        sighting = Sighting(
            origin.epoch or "", origin.seq, held, now.isoformat(), origin.history, origin.offset
        )
        if origin.history is not None and origin.history in state.superseded:
            return self._old_side(state, origin), None
        last = state.last
        found = None if last is None else judge(last, state.history, origin)
        loss = None
        if found is not None and last is not None:
            loss = self._loss(found, last, recorded=False)
            state.losses.append(loss_row(loss))
        if origin.previous_history is not None and origin.history != (last and last.history):
            state.superseded.setdefault(origin.previous_history, origin.fork_offset)
        if origin.epoch is None:
            state.last = None
            return loss, ("" if last is None else last.epoch)
        if last is None or (last.epoch, last.seq, last.history, last.offset) != (
            sighting.epoch,
            sighting.seq,
            sighting.history,
            sighting.offset,
        ):
            if last is not None:
                state.history.append(last)
                del state.history[:-HISTORY]
            state.last = sighting
        return loss, None

    def _old_side(self, state: SightingState, origin: BufferOrigin) -> BufferLoss | None:
        """A look at a master a failover replaced, still answering (two masters for a while).

        What it took past the fork is on no replica that took over: a loss,
        reported once. The look is not kept as a sighting.
        """
        assert origin.history is not None
        fork = state.superseded[origin.history]
        if fork < 0 or origin.offset < fork or state.last is None:
            return None
        state.superseded[origin.history] = -1
        older = [s.seq for s in state.history if s.history == origin.history and s.offset < fork]
        split = Judgement(
            f"two masters: the one replaced by a failover took writes past offset {fork}, "
            "which the new master does not hold",
            origin.seq,
            max(older) if older else None,
            open_ended=not origin.replicated,
        )
        loss = self._loss(split, state.last, recorded=False)
        state.losses.append(loss_row(loss))
        return loss

    def _loss(self, found: Judgement, last: Sighting, *, recorded: bool) -> BufferLoss:
        return BufferLoss(
            utc_now(),
            aware(dt.datetime.fromisoformat(last.seen_at)),
            found.cause,
            found.seen_seq,
            found.found_seq,
            last.held,
            recorded,
            found.open_ended,
        )

    async def _stamp(self, previous: str) -> None:
        """Give a buffer that lost its marker a new one, naming the one it follows."""
        assert isinstance(self.backend, SupportsBufferMarker)
        epoch = new_epoch_after(previous, _new_epoch()) if previous else _new_epoch()
        await self.backend.stamp_buffer(epoch)  # only where none is: the first watcher wins

    async def _copy_soon(self) -> None:
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


async def watch_buffer(watch: BufferWatch, interval: float) -> None:
    """The worker's watch: check at start and every ``interval`` seconds, until cancelled.

    Losses still open at start are logged at ERROR, as each new one is when
    found. A buffer or database that cannot be reached is the processor's
    to report; the watch tries again at the next look.
    """
    try:
        await _watch(watch, interval)
    finally:
        watch.cancel_copy()


async def _watch(watch: BufferWatch, interval: float) -> None:
    first, failing = True, False
    while True:
        try:
            losses = await watch.check()
            if first:
                for loss in losses:
                    watch.log.error("%s", loss.describe())
            first = False
            if failing:
                watch.log.info("checking the buffer against the main database again")
            failing = False
        except (BufferingError, SQLAlchemyError, OSError) as exc:
            # A cancellation a driver's clean-up turned into another error
            # (PendingRollbackError) must still end the watch.
            raise_if_cancelling()
            if not failing:
                watch.log.info("could not check the buffer against the main database: %s", exc)
            failing = True
        await asyncio.sleep(interval)
