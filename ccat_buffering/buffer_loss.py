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

A sighting also keeps the ids of the transactions unfinished at it. When a
loss is told, the watch asks the buffer which of those it no longer has: the
report names them and counts them (not the whole range). What was buffered
after the last sighting and lost cannot be named; a report says so when that
may have happened. Looks are judged and kept by
:mod:`ccat_buffering._buffer_looks`; losses are kept by
:mod:`ccat_buffering._loss_store`.

The worker records each loss in ``ccat_buffer_losses`` (when it was found,
when the buffer was last seen whole, the sequence numbers that may be gone,
how many unfinished transactions the buffer held then, and which of them are
gone), logs it at ERROR, and stamps a new epoch so that work goes on.
``status`` and ``inspect`` report every loss not yet acknowledged (and one
they find themselves before a worker has recorded it), until
:meth:`BufferWatch.acknowledge` is called.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering._buffer_looks import Look, take_look
from ccat_buffering._loss_records import BufferLoss, aware, loss_metadata, loss_row
from ccat_buffering._loss_store import COPY_WAIT, LossStore
from ccat_buffering._sightings import (
    BufferOrigin,
    Sighting,
    SightingFile,
    default_state_dir,
    judge,
    new_epoch_after,
)
from ccat_buffering._stopping import raise_if_cancelling
from ccat_buffering.errors import BufferingError
from ccat_buffering.logs import SiteLogger
from ccat_buffering.models import utc_now
from ccat_buffering.protocols import Backend, SupportsBufferMarker, SupportsBufferOrigin
from ccat_buffering.status import TransactionState

__all__ = ["COPY_WAIT", "BufferLoss", "BufferWatch", "loss_metadata", "watch_buffer"]

UNFINISHED = (
    TransactionState.BUFFERED,
    TransactionState.PROCESSING,
    TransactionState.RETRYING,
    TransactionState.CONFLICTED,
)
"""The states of a transaction that the buffer alone holds (a committed one is in the ledger)."""

HELD_IDS = 100_000
"""Unfinished transactions whose ids a sighting keeps (about 4 MB on disk, rewritten
at each look that moved); past it a loss is reported as a range and a count held."""


def _new_epoch() -> str:
    return f"{uuid.uuid4().hex[:16]} {int(time.time() * 1000)}"


class BufferWatch:
    """Compares a site's buffer with what was last seen of it.

    Sightings are kept on this host's disk (:class:`~ccat_buffering._sightings.SightingFile`,
    written at every look at which something moved, whatever the main
    database is doing) and copied to the main database when it answers (for
    ``status`` on other hosts, and a worker on a new host). A loss found is
    kept on disk at once and written to the main database when it answers
    (:class:`~ccat_buffering._loss_store.LossStore`).

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
        self.log = SiteLogger(__name__, backend.site)
        self.store = LossStore(
            engine, self.sightings, backend.site, save_every=save_every, clock=clock, log=self.log
        )

    @property
    def supported(self) -> bool:
        """Whether the backend carries a marker to check."""
        return isinstance(self.backend, SupportsBufferMarker)

    async def create_tables(self) -> None:
        """Create the two tables if they do not exist."""
        await self.store.create_tables()

    async def _database_losses(self) -> list[BufferLoss]:
        return await self.store.database_losses()

    async def open_losses(self, *, strict: bool = False) -> list[BufferLoss]:
        """Every loss not yet acknowledged, oldest first: the main database's and this host's.

        Args:
            strict: Raise when the main database cannot be reached; otherwise
                the losses kept on this host's disk are returned alone.
        """
        return await self.store.open_losses(strict=strict)

    async def acknowledge(self) -> int:
        """Mark every open loss as seen by an operator.

        Returns:
            How many there were.
        """
        return await self.store.acknowledge()

    def cancel_copy(self) -> None:
        """Stop a copy to the main database that is still running (the watch is stopping)."""
        self.store.cancel_copy()

    async def _held(self) -> int:
        stats = await self.backend.buffer.stats()
        return stats.depth + stats.in_flight

    async def _held_ids(self) -> list[str] | None:
        """The unfinished transactions' ids; ``None`` past :data:`HELD_IDS`."""
        ids: list[str] = []
        for state in UNFINISHED:
            ids.extend(await self.backend.status.ids(state, HELD_IDS + 1 - len(ids)))
            if len(ids) > HELD_IDS:
                return None
        return ids

    async def _origin(self) -> BufferOrigin | None:
        if isinstance(self.backend, SupportsBufferOrigin):
            return await self.backend.buffer_origin()
        if isinstance(self.backend, SupportsBufferMarker):
            epoch, seq = await self.backend.buffer_mark()
            return BufferOrigin(epoch, seq)
        return None

    async def _gone(self, ids: list[str]) -> list[str]:
        """Which of ``ids`` the buffer has no status of any more."""
        statuses = await self.backend.status.get_many(ids) if ids else []
        return [i for i, status in zip(ids, statuses, strict=True) if status is None]

    async def check(self, *, record: bool = True) -> list[BufferLoss]:
        """Look at the buffer; keep the sighting, and record a loss if it does not follow.

        Args:
            record: Keep the sighting, record a loss and stamp a new marker
                (the worker). ``False`` changes nothing (``status``,
                ``inspect``): a loss found then is returned, not recorded.

        Returns:
            The losses not yet acknowledged (with one just found).
        """
        if not isinstance(self.backend, SupportsBufferOrigin | SupportsBufferMarker):
            return []
        # Read before the marker: every id read was written at or below the offset read
        # with it. A look that records nothing keeps nothing, and needs none.
        ids = await self._held_ids() if record else None
        origin = await self._origin()
        if origin is None:
            return []
        held = await self._held()
        stored = self.sightings.read()
        fallback = None if stored.exists else await self.store.database_sighting()
        if not record:
            last = stored.last or fallback
            losses = await self.open_losses(strict=True)
            if (
                last is not None
                and origin.history not in stored.superseded
                and not origin.acknowledges_nothing
            ):
                found = judge(last, stored.history, origin)
                loss = _unnamed(Look(found, last, stored.held_ids))
                if loss is not None:
                    losses.append(await self._named(loss, stored.held_ids))
            return losses
        now = utc_now()
        sighting = Sighting(
            origin.epoch or "", origin.seq, held, now.isoformat(), origin.history, origin.read_at
        )
        with self.sightings.locked() as state:
            if not state.exists and fallback is not None:
                state.last = fallback
            look = take_look(state, origin, sighting, ids)
            # Kept with the look that found it: the sighting has moved on.
            loss = _unnamed(look)
            if loss is not None:
                state.losses.append(loss_row(loss))
        if loss is not None:
            if look.exact and look.held_ids is not None:
                named = await self._named(loss, look.held_ids)
                with self.sightings.locked() as state:
                    for i, row in enumerate(state.losses):
                        if row["detected_at"] == loss.detected_at.isoformat():
                            state.losses[i] = loss_row(named)
                loss = named
            self.log.error("%s", loss.describe())
        if look.stamp_after is not None:
            await self._stamp(look.stamp_after)
            # Keep the new marker as the sighting at once: a loss after this is told too.
            origin = await self._origin()
            if origin is not None and origin.epoch is not None:
                stamped = Sighting(
                    origin.epoch, origin.seq, held, now.isoformat(), origin.history, origin.read_at
                )
                with self.sightings.locked() as state:
                    take_look(state, origin, stamped, ids)
        await self.store.copy_soon()
        return await self.open_losses()

    async def _named(self, loss: BufferLoss, held_ids: list[str] | None) -> BufferLoss:
        """``loss`` with the transactions of ``held_ids`` that the buffer no longer has.

        Unchanged if they are not known, or the buffer cannot be asked (the
        loss is reported all the same, as a range).
        """
        if held_ids is None:
            return loss
        try:
            gone = await self._gone(held_ids)
        except (BufferingError, OSError) as exc:
            self.log.warning("could not tell which transactions the loss took: %s", exc)
            return loss
        return dataclasses.replace(loss, missing=len(gone), missing_ids=tuple(gone))

    async def _stamp(self, previous: str) -> None:
        """Give a buffer that lost its marker a new one, naming the one it follows."""
        assert isinstance(self.backend, SupportsBufferMarker)
        epoch = new_epoch_after(previous, _new_epoch()) if previous else _new_epoch()
        await self.backend.stamp_buffer(epoch)  # only where none is: the first watcher wins


def _unnamed(look: Look) -> BufferLoss | None:
    """The loss ``look`` found (``None``: none), before the transactions it took are known."""
    found, last = look.found, look.last
    if found is None or last is None:
        return None
    return BufferLoss(
        utc_now(),
        aware(dt.datetime.fromisoformat(last.seen_at)),
        found.cause,
        found.seen_seq,
        found.found_seq,
        last.held,
        False,
        found.open_ended,
    )


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
