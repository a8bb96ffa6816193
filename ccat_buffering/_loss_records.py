"""What the main database keeps of buffer losses: the last sighting of each site, and the losses.

The tables of :mod:`ccat_buffering.buffer_loss`, the loss itself
(:class:`BufferLoss`) and the few statements the watch runs on them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ccat_buffering._sightings import Sighting

__all__ = [
    "BufferLoss",
    "Mark",
    "aware",
    "insert_loss",
    "loss_from_row",
    "loss_metadata",
    "loss_row",
    "losses_table",
    "marks_table",
    "recorded_losses",
    "save_mark",
]

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
    sa.Column("missing", sa.BigInteger, nullable=True),
    sa.Column("missing_ids", sa.Text, nullable=True),
    sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
)
"""Every loss found, until an operator acknowledges it."""


def aware(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC, if the database gave it back without its zone."""
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
            before a worker recorded it, or kept on the worker's disk until the
            main database answers).
        open_ended: Sequence numbers after ``seen_seq`` may be gone too.
        missing: How many of the transactions unfinished at the last sighting
            the buffer no longer has (``None``: not known; the range alone).
        missing_ids: Their ids.
    """

    detected_at: dt.datetime
    since: dt.datetime
    cause: str
    seen_seq: int
    found_seq: int | None
    held: int
    recorded: bool = True
    open_ended: bool = True
    missing: int | None = None
    missing_ids: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for an operator: what was lost, since when, and what to do."""
        if self.missing is not None:
            return self._describe_exact(self.missing)
        after = ", and any after" if self.open_ended else ""
        if self.found_seq is not None and 0 <= self.found_seq < self.seen_seq:
            numbers = (
                f"sequence numbers {self.found_seq + 1} to {self.seen_seq}{after} may be gone; "
                "a superset: the counter also numbers other writes, and some may have been "
                "applied already"
            )
        else:
            numbers = f"sequence numbers up to {self.seen_seq} not yet applied{after}"
        return (
            f"the buffer lost state ({self.cause}), found {self.detected_at:%Y-%m-%d %H:%M:%S} "
            f"UTC; last seen whole {self.since:%Y-%m-%d %H:%M:%S} UTC holding {self.held} "
            f"unfinished transaction(s): those, and any buffered after, may be gone "
            f"({numbers}). Transactions the ledger does not hold were lost: "
            "resubmit them, then acknowledge the loss"
        )

    def _describe_exact(self, missing: int) -> str:
        shown = ", ".join(self.missing_ids[:SHOWN_IDS])
        more = len(self.missing_ids) - SHOWN_IDS
        ids = f": {shown}" + (f" and {more} more" if more > 0 else "") if shown else ""
        if self.found_seq is not None and 0 <= self.found_seq < self.seen_seq:
            ids += (
                f" (the range at risk: sequence numbers {self.found_seq + 1} to "
                f"{self.seen_seq}, which also number other writes)"
            )
        after = (
            f"; any transaction buffered after it (sequence numbers above {self.seen_seq}) "
            "may be gone too"
            if self.open_ended
            else ""
        )
        return (
            f"the buffer lost state ({self.cause}), found {self.detected_at:%Y-%m-%d %H:%M:%S} "
            f"UTC; last seen whole {self.since:%Y-%m-%d %H:%M:%S} UTC holding {self.held} "
            f"unfinished transaction(s), {missing} of them gone{ids}{after}. Those the "
            "ledger holds were applied before the loss; resubmit the others, then acknowledge "
            "the loss"
        )


SHOWN_IDS = 20
"""Transaction ids a loss's one-line description names (all are kept with it)."""


@dataclass(frozen=True, slots=True)
class Mark:
    """The last sighting of a site's buffer, as the main database keeps it."""

    epoch: str
    seq: int
    held: int
    seen_at: dt.datetime


def loss_row(loss: BufferLoss) -> dict[str, Any]:
    """A loss as this host's file keeps it (JSON)."""
    return {
        "detected_at": loss.detected_at.isoformat(),
        "since": loss.since.isoformat(),
        "cause": loss.cause,
        "seen_seq": loss.seen_seq,
        "found_seq": loss.found_seq,
        "held": loss.held,
        "open_ended": loss.open_ended,
        "missing": loss.missing,
        "missing_ids": list(loss.missing_ids),
    }


def loss_from_row(row: dict[str, Any], *, recorded: bool) -> BufferLoss:
    """A loss from this host's file."""
    return BufferLoss(
        dt.datetime.fromisoformat(row["detected_at"]),
        dt.datetime.fromisoformat(row["since"]),
        row["cause"],
        int(row["seen_seq"]),
        None if row["found_seq"] is None else int(row["found_seq"]),
        int(row["held"]),
        recorded,
        bool(row.get("open_ended", True)),
        None if row.get("missing") is None else int(row["missing"]),
        tuple(row.get("missing_ids") or ()),
    )


async def recorded_losses(conn: AsyncConnection, site: str) -> set[tuple[dt.datetime, str]]:
    """When each recorded loss of ``site`` was found, and its cause: what identifies it."""
    rows = await conn.execute(
        sa.select(losses_table.c.detected_at, losses_table.c.cause).where(
            losses_table.c.site == site
        )
    )
    return {(aware(r.detected_at), r.cause) for r in rows}


async def insert_loss(conn: AsyncConnection, site: str, loss: BufferLoss) -> None:
    """Record a loss of ``site``."""
    await conn.execute(
        sa.insert(losses_table).values(
            site=site,
            detected_at=loss.detected_at,
            since=loss.since,
            cause=loss.cause,
            seen_seq=loss.seen_seq,
            found_seq=loss.found_seq,
            held=loss.held,
            missing=loss.missing,
            missing_ids=" ".join(loss.missing_ids) if loss.missing is not None else None,
        )
    )


async def save_mark(conn: AsyncConnection, site: str, last: Sighting) -> None:
    """Keep ``last`` as the site's last sighting."""
    values = {
        "epoch": last.epoch,
        "seq": last.seq,
        "held": last.held,
        "seen_at": aware(dt.datetime.fromisoformat(last.seen_at)),
    }
    updated = await conn.execute(
        sa.update(marks_table).where(marks_table.c.site == site).values(**values)
    )
    if updated.rowcount == 0:
        await conn.execute(sa.insert(marks_table).values(site=site, **values))
