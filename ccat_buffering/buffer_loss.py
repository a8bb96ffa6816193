"""Telling that the buffer lost state it held, from what the main database remembers of it.

A buffer that restarts without persistence, is flushed, or fails over to a
replica that was behind forgets what it held, and forgets that it held it:
nothing in it can tell. So the buffer carries a marker (an epoch, stamped
once, and its sequence counter, which only grows while the buffer keeps its
state), and a :class:`BufferWatch` keeps the marker's last sighting in the
main database (table ``ccat_buffer_marks``). A sighting that does not follow
from the last one is a loss:

* no marker where the database remembers one: a restart without
  persistence, or a flush;
* another marker: the buffer was replaced by another one;
* the same marker with a lower counter: a failover to a replica that was
  behind, or a restore from an older copy.

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
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering._stopping import raise_if_cancelling
from ccat_buffering.errors import BufferingError
from ccat_buffering.logs import SiteLogger
from ccat_buffering.models import utc_now
from ccat_buffering.protocols import Backend, SupportsBufferMarker

__all__ = ["BufferLoss", "BufferWatch", "loss_metadata", "watch_buffer"]

loss_metadata = sa.MetaData()
"""The tables of buffer-loss detection; include it in Alembic's ``target_metadata``."""

marks_table = sa.Table(
    "ccat_buffer_marks",
    loss_metadata,
    sa.Column("site", sa.String(200), primary_key=True),
    sa.Column("epoch", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("held", sa.BigInteger, nullable=False),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
)
"""The last sighting of each site's buffer: marker, counter, unfinished transactions."""

losses_table = sa.Table(
    "ccat_buffer_losses",
    loss_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("site", sa.String(200), nullable=False, index=True),
    sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Column("seen_seq", sa.BigInteger, nullable=False),
    sa.Column("found_seq", sa.BigInteger, nullable=True),
    sa.Column("held", sa.BigInteger, nullable=False),
    sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
)
"""Every loss found, until an operator acknowledges it."""


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite gives naive datetimes back: they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class BufferLoss:
    """State the buffer held and lost.

    Attributes:
        detected_at: When it was found.
        since: When the buffer was last seen whole: what was buffered after
            this may be gone too.
        cause: What the marker showed.
        seen_seq: The buffer's counter when last seen whole.
        found_seq: Its counter when the loss was found (``None``: no counter,
            the buffer was empty).
        held: Unfinished transactions the buffer held when last seen whole.
        recorded: Written to the main database (``False``: found by a reader
            before a worker recorded it).
    """

    detected_at: dt.datetime
    since: dt.datetime
    cause: str
    seen_seq: int
    found_seq: int | None
    held: int
    recorded: bool = True

    def describe(self) -> str:
        """One line for an operator: what was lost, since when, and what to do."""
        if self.found_seq is not None and 0 < self.found_seq < self.seen_seq:
            numbers = f"sequence numbers {self.found_seq + 1} to {self.seen_seq} are gone"
        else:
            numbers = f"sequence numbers up to {self.seen_seq} not yet applied, and any after"
        return (
            f"the buffer lost state ({self.cause}), found {self.detected_at:%Y-%m-%d %H:%M:%S} "
            f"UTC; last seen whole {self.since:%Y-%m-%d %H:%M:%S} UTC holding {self.held} "
            f"unfinished transaction(s): those, and any buffered after, may be gone "
            f"({numbers}). Transactions the ledger does not hold were lost: "
            "resubmit them, then acknowledge the loss"
        )


def _new_epoch() -> str:
    return f"{uuid.uuid4().hex[:16]} {int(time.time() * 1000)}"


@dataclass(frozen=True, slots=True)
class _Mark:
    epoch: str
    seq: int
    held: int
    seen_at: dt.datetime


class BufferWatch:
    """Compares a site's buffer with what the main database remembers of it.

    Args:
        engine: The main database.
        backend: The site's stores; without
            :class:`~ccat_buffering.protocols.SupportsBufferMarker` (the memory
            backend, which keeps nothing across a restart by design) nothing is checked.
        save_every: Seconds between saves of a sighting whose counter moved.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        backend: Backend,
        *,
        save_every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.backend = backend
        self.site = backend.site
        self.save_every = save_every
        self.clock = clock
        self.log = SiteLogger(__name__, backend.site)
        self._known: tuple[str, int] | None = None
        self._saved_at = float("-inf")
        self._open: list[BufferLoss] = []
        self._tables = False

    @property
    def supported(self) -> bool:
        """Whether the backend carries a marker to check."""
        return isinstance(self.backend, SupportsBufferMarker)

    async def create_tables(self) -> None:
        """Create the two tables if they do not exist."""
        async with self.engine.begin() as conn:
            await conn.run_sync(loss_metadata.create_all, checkfirst=True)
        self._tables = True

    async def _tables_exist(self) -> bool:
        if self._tables:
            return True
        async with self.engine.connect() as conn:
            found = await conn.run_sync(lambda sync: sa.inspect(sync).has_table(marks_table.name))
        self._tables = bool(found)
        return self._tables

    async def _row(self) -> _Mark | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(marks_table).where(marks_table.c.site == self.site))
            ).first()
        if row is None:
            return None
        return _Mark(row.epoch, int(row.seq), int(row.held), _aware(row.seen_at))

    async def open_losses(self) -> list[BufferLoss]:
        """Every recorded loss not yet acknowledged, oldest first."""
        if not await self._tables_exist():
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
                _aware(r.detected_at),
                _aware(r.since),
                r.cause,
                int(r.seen_seq),
                None if r.found_seq is None else int(r.found_seq),
                int(r.held),
            )
            for r in rows
        ]

    async def acknowledge(self) -> int:
        """Mark every open loss as seen by an operator.

        Returns:
            How many there were.
        """
        if not await self._tables_exist():
            return 0
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(losses_table)
                .where(losses_table.c.site == self.site, losses_table.c.acknowledged_at.is_(None))
                .values(acknowledged_at=utc_now())
            )
        self._open = []
        return int(result.rowcount or 0)

    async def _held(self) -> int:
        stats = await self.backend.buffer.stats()
        return stats.depth + stats.in_flight

    @staticmethod
    def _cause(row: _Mark, epoch: str | None, seq: int) -> str | None:
        if epoch is None:
            return "its marker is gone: a restart without persistence, or a flush"
        if epoch != row.epoch:
            return "it carries another marker: it was replaced by another buffer"
        if seq < row.seq:
            return (
                f"its counter went back from {row.seq} to {seq}: a failover to a replica "
                "that was behind, or a restore"
            )
        return None

    async def check(self, *, record: bool = True) -> list[BufferLoss]:
        """Look at the buffer's marker; record a loss if it does not follow.

        Args:
            record: Save the sighting, record a loss and stamp a new epoch (the
                worker). ``False`` changes nothing (``status``, ``inspect``):
                a loss found then is returned, not recorded.

        Returns:
            The losses not yet acknowledged (with one just found).
        """
        if not isinstance(self.backend, SupportsBufferMarker):
            return []
        epoch, seq = await self.backend.buffer_mark()
        known = self._known
        if record and known is not None and epoch == known[0] and seq >= known[1]:
            if seq > known[1] and self.clock() - self._saved_at >= self.save_every:
                # Tried at most every save_every seconds, also while the main
                # database cannot be reached (a link outage).
                self._saved_at = self.clock()
                await self._save(epoch, seq, await self._held(), insert=False)
                self._known = (epoch, seq)
            return list(self._open)
        if record:
            await self.create_tables()
        elif not await self._tables_exist():
            return []
        row = await self._row()
        found: BufferLoss | None = None
        if row is None:
            if record:
                if epoch is None:
                    await self.backend.stamp_buffer(_new_epoch())
                    epoch, seq = await self.backend.buffer_mark()
                if epoch is not None:
                    await self._save(epoch, seq, await self._held(), insert=True)
        else:
            cause = self._cause(row, epoch, seq)
            if cause is None:
                if record and seq > row.seq:
                    await self._save(row.epoch, seq, await self._held(), insert=False)
            else:
                found = BufferLoss(
                    utc_now(), row.seen_at, cause, row.seq, seq or None, row.held, record
                )
                if record:
                    epoch = await self._record(row, found)
                    seq = (await self.backend.buffer_mark())[1]
        losses = await self.open_losses()
        if found is not None and not record:
            losses.append(found)
        if record and epoch is not None:
            self._known, self._open = (epoch, seq), losses
        return losses

    async def _save(self, epoch: str, seq: int, held: int, *, insert: bool) -> None:
        values = {"epoch": epoch, "seq": seq, "held": held, "seen_at": utc_now()}
        async with self.engine.begin() as conn:
            if insert:
                await conn.execute(sa.insert(marks_table).values(site=self.site, **values))
            else:
                await conn.execute(
                    sa.update(marks_table).where(marks_table.c.site == self.site).values(**values)
                )
        self._saved_at = self.clock()

    async def _record(self, row: _Mark, loss: BufferLoss) -> str | None:
        """Record the loss once (the first watcher to move the marker wins), then restamp."""
        epoch = _new_epoch()
        seq = loss.found_seq or 0
        async with self.engine.begin() as conn:
            moved = await conn.execute(
                sa.update(marks_table)
                .where(
                    marks_table.c.site == self.site,
                    marks_table.c.epoch == row.epoch,
                    marks_table.c.seq == row.seq,
                )
                .values(epoch=epoch, seq=seq, held=await self._held(), seen_at=utc_now())
            )
            if moved.rowcount != 1:
                return None  # another watcher recorded it; the next look sees its epoch
            await conn.execute(
                sa.insert(losses_table).values(
                    site=self.site,
                    detected_at=loss.detected_at,
                    since=loss.since,
                    cause=loss.cause,
                    seen_seq=loss.seen_seq,
                    found_seq=loss.found_seq,
                    held=loss.held,
                )
            )
        assert isinstance(self.backend, SupportsBufferMarker)
        await self.backend.stamp_buffer(epoch, replace=True)
        self._saved_at = self.clock()
        self.log.error("%s", loss.describe())
        return epoch


async def watch_buffer(watch: BufferWatch, interval: float) -> None:
    """The worker's watch: check at start and every ``interval`` seconds, until cancelled.

    Losses still open at start are logged at ERROR, as each new one is when
    found. A buffer or database that cannot be reached is the processor's
    to report; the watch tries again at the next look.
    """
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
