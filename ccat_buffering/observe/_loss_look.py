"""A reader's look for lost buffer state, in one statement to the main database.

``status`` asks the main database what it remembers of the buffer (the last
sighting, the losses not yet acknowledged) while that database may be 200 ms
or more away. :meth:`~ccat_buffering.observe.buffer_loss.BufferWatch.check` with
``record=False`` asks in up to four round trips of its own on top of a
connection's set-up (a table inspection, the sighting, the losses); this look
asks once, in one ``UNION ALL`` over both tables, on the same connection
that read nothing else, and reads the buffer's marker from Redis meanwhile.
It changes nothing, as ``check(record=False)`` does, and judges the same way
(:func:`~ccat_buffering.buffer._sightings.judge`).

A statement cut short (a timeout's cancel, a dropped link) discards its
connection instead of rolling it back: the rollback would wait on the same
link, and once a cancel had interrupted it, SQLAlchemy refused the connection
with "Can't reconnect until invalid transaction is rolled back" -- which
``status`` showed as a loss check that failed, after every clean drain.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer._sightings import BufferOrigin, Sighting, judge
from ccat_buffering.buffer.protocols import SupportsBufferMarker, SupportsBufferOrigin
from ccat_buffering.observe._buffer_looks import Look
from ccat_buffering.observe._loss_records import (
    BufferLoss,
    aware,
    loss_from_row,
    losses_table,
    marks_table,
)
from ccat_buffering.observe.buffer_loss import BufferWatch, _unnamed

__all__ = ["DatabaseView", "database_view", "look"]


@dataclass(frozen=True)
class DatabaseView:
    """What the main database remembers of a site's buffer.

    Attributes:
        last: The last sighting a worker copied there (``None``: none, or no tables).
        losses: The losses not yet acknowledged, oldest first.
    """

    last: Sighting | None
    losses: list[BufferLoss]


def _statement(site: str) -> sa.CompoundSelect[Any]:
    big, when = sa.BigInteger(), sa.DateTime(timezone=True)
    mark = sa.select(
        sa.literal(0).label("id"),
        marks_table.c.epoch.label("text"),
        marks_table.c.seq.label("seq"),
        sa.cast(sa.null(), big).label("found_seq"),
        marks_table.c.held.label("held"),
        marks_table.c.seen_at.label("at"),
        sa.cast(sa.null(), when).label("since"),
        sa.cast(sa.null(), big).label("missing"),
        sa.cast(sa.null(), sa.Text()).label("missing_ids"),
    ).where(marks_table.c.site == site)
    losses = sa.select(
        losses_table.c.id,
        losses_table.c.cause,
        losses_table.c.seen_seq,
        losses_table.c.found_seq,
        losses_table.c.held,
        losses_table.c.detected_at,
        losses_table.c.since,
        losses_table.c.missing,
        losses_table.c.missing_ids,
    ).where(losses_table.c.site == site, losses_table.c.acknowledged_at.is_(None))
    return sa.union_all(mark, losses).order_by("id")


def _missing_tables(exc: Exception) -> bool:
    # No worker has created them yet: nothing is remembered, which is no error.
    text = str(exc).lower()
    return ("relation" in text and "does not exist" in text) or "no such table" in text


class OlderTables(Exception):
    """The loss tables lack a newer column (no worker has upgraded them yet)."""


async def database_view(engine: AsyncEngine, site: str) -> DatabaseView:
    """Read the last sighting and the open losses of ``site`` in one statement.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: The database could not be read.
        OSError: It could not be reached.
    """
    async with engine.connect() as conn:
        try:
            rows = (await conn.execute(_statement(site))).all()
        except (ProgrammingError, OperationalError) as exc:
            await conn.invalidate()
            if _missing_tables(exc):
                return DatabaseView(None, [])
            text = str(exc).lower()
            if "column" in text and ("does not exist" in text or "no such" in text):
                raise OlderTables(str(exc)) from exc
            raise
        except BaseException:
            await conn.invalidate()  # never roll back over a link that was cut short
            raise
    last = None
    losses = []
    for row in rows:
        if row.id == 0:
            last = Sighting(row.text, int(row.seq), int(row.held), aware(row.at).isoformat())
        else:
            found = None if row.found_seq is None else int(row.found_seq)
            losses.append(
                BufferLoss(
                    aware(row.at),
                    aware(row.since),
                    row.text,
                    int(row.seq),
                    found,
                    int(row.held),
                    missing=None if row.missing is None else int(row.missing),
                    missing_ids=tuple((row.missing_ids or "").split()),
                )
            )
    return DatabaseView(last, losses)


async def _origin(watch: BufferWatch) -> BufferOrigin | None:
    backend = watch.backend
    if isinstance(backend, SupportsBufferOrigin):
        return await backend.buffer_origin()
    if isinstance(backend, SupportsBufferMarker):
        epoch, seq = await backend.buffer_mark()
        return BufferOrigin(epoch, seq)
    return None


async def look(watch: BufferWatch) -> list[BufferLoss]:
    """``watch.check(record=False)`` in one statement: the losses not yet acknowledged.

    Returns:
        The main database's open losses, this host's not yet copied there, and
        one this look finds itself, oldest first.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: The main database could not be read.
        OSError: It could not be reached.
    """
    if not watch.supported:
        return []
    if watch.engine is None:
        origin, view = await _origin(watch), DatabaseView(None, [])
    else:
        try:
            origin, view = await asyncio.gather(
                _origin(watch), database_view(watch.engine, watch.site)
            )
        except OlderTables:
            return await watch.check(record=False)  # the long way, which reads any version
    if origin is None:
        return []
    stored = watch.sightings.read()
    known = {(loss.detected_at, loss.cause) for loss in view.losses}
    local = [
        loss
        for loss in (
            loss_from_row(row, recorded=False)
            for row in stored.losses
            if not row.get("in_database")
        )
        if (loss.detected_at, loss.cause) not in known
    ]
    losses = sorted(view.losses + local, key=lambda loss: loss.detected_at)
    last = stored.last if stored.exists else view.last
    if (
        last is not None
        and origin.history not in stored.superseded
        and not origin.acknowledges_nothing
    ):
        if last.history is None:
            # A sighting the main database kept has no replication history: it
            # cannot tell a failover, only the marker and the counter. Judged
            # with the history, Redis's "no previous history" matched its
            # missing one and every clean buffer showed a failover's loss.
            origin = dataclasses.replace(origin, history=None, previous_history=None)
        # Judged and named as BufferWatch.check(record=False) does.
        loss = _unnamed(Look(judge(last, stored.history, origin), last, stored.held_ids))
        if loss is not None:
            losses.append(await watch._named(loss, stored.held_ids))
    return losses
