"""The console's conflicts: the conflict log read and resolved as ``ccat-buffering conflicts`` does.

The log lives in the main database (:mod:`ccat_buffering.conflicts.log`), so
every read here is bounded by :data:`WAIT` seconds: during an outage the pages
still load and say the log could not be read. A resolution is
:func:`ccat_buffering.conflicts.resolve.resolve_conflict`, the function behind
``conflicts resolve``; on a selection it resolves the rejected conflicts
oldest first (a conflict *waiting* behind another is released by resolving
that one, never directly), after the operator confirmed the count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from ccat_buffering.conflicts.kinds import ConflictOutcome
from ccat_buffering.conflicts.log import (
    ConflictRecord,
    count_unresolved,
    get_conflict,
    list_conflicts,
)
from ccat_buffering.conflicts.resolve import Keep, resolve_conflict
from ccat_buffering.console._actions import StaleCount, record
from ccat_buffering.console._data import PAGE
from ccat_buffering.console._site import ConsoleSite
from ccat_buffering.errors import BufferingError

__all__ = [
    "LIMIT",
    "WAIT",
    "ConflictFilter",
    "ConflictPlan",
    "LogUnreadable",
    "count_open",
    "diff",
    "one",
    "open_conflicts",
    "plan",
    "resolve",
    "unresolved_count",
]

LIMIT = 1000
"""Open conflicts a resolution of a filter reads in one query (it reads them all, page by page)."""

WAIT = 5.0
"""Seconds a read of the conflict log may take before the page says it could not."""

T = TypeVar("T")


class LogUnreadable(Exception):
    """The conflict log could not be read (no main database, or it did not answer)."""


async def _read(site: ConsoleSite, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    if site.engine is None:
        raise LogUnreadable("the conflict log is in the main database: set database_url")
    try:
        async with asyncio.timeout(WAIT), site.engine.connect() as conn:
            return await query(conn)
    except (TimeoutError, OSError, SQLAlchemyError) as exc:
        raise LogUnreadable(
            f"the conflict log could not be read from the main database ({type(exc).__name__})"
        ) from exc


@dataclass(frozen=True)
class ConflictFilter:
    """Which open conflicts: by model, kind and writing site (empty: any), in the query."""

    model: str = ""
    kind: str = ""
    site: str = ""

    def label(self) -> str:
        """The filter in words, for the audit line."""
        parts = [f"{name}={value}" for name, value in vars(self).items() if value]
        return "all open" if not parts else "all open with " + ", ".join(parts)


async def unresolved_count(site: ConsoleSite) -> int | None:
    """How many of the site's conflicts wait for an operator (``None``: unknown)."""
    try:
        return await _read(site, lambda conn: count_unresolved(conn, site.backend.site))
    except LogUnreadable:
        return None


async def open_conflicts(
    site: ConsoleSite, wanted: ConflictFilter, before: int | None = None, limit: int = PAGE
) -> tuple[list[ConflictRecord], int | None]:
    """A page of the open conflicts the filter matches, newest first, and the next page's start.

    The filters and the page (by id, from ``before``) are in the query: a
    page reads its own rows, whatever the log holds before it.
    """
    found = await _read(
        site,
        lambda conn: list_conflicts(
            conn,
            site=wanted.site or None,
            model=wanted.model or None,
            kind=wanted.kind or None,
            unresolved_only=True,
            limit=limit + 1,
            before=before,
        ),
    )
    return found[:limit], found[limit - 1].id if len(found) > limit else None


async def count_open(site: ConsoleSite, wanted: ConflictFilter) -> int:
    """How many open conflicts the filter matches."""
    return await _read(
        site,
        lambda conn: count_unresolved(
            conn, wanted.site or None, model=wanted.model or None, kind=wanted.kind or None
        ),
    )


async def one(site: ConsoleSite, conflict_id: int) -> ConflictRecord | None:
    """One conflict by its id (``None``: no such conflict)."""
    return await _read(site, lambda conn: get_conflict(conn, conflict_id))


def diff(found: ConflictRecord) -> list[dict[str, Any]]:
    """Base, mine and theirs per field (``None`` where the log does not know it)."""
    c = found.conflict
    return [
        {
            "field": name,
            "base": c.base.get(name),
            "mine": c.mine.get(name),
            "theirs": c.theirs.get(name),
            "known_base": name in c.base,
        }
        for name in sorted(set(c.base) | set(c.mine) | set(c.theirs))
    ]


@dataclass(frozen=True)
class ConflictPlan:
    """What a resolution of a selection would touch.

    Attributes:
        chosen: The rejected conflicts it resolves, oldest first.
        waiting: Conflicts of the selection waiting behind another; resolving
            their blocker releases them.
    """

    chosen: list[ConflictRecord]
    waiting: list[ConflictRecord] = field(default_factory=list)


async def plan(site: ConsoleSite, ids: Sequence[int], wanted: ConflictFilter) -> ConflictPlan:
    """The conflicts named by ``ids``, or matching ``wanted`` when no id is given."""
    if ids:
        records = [await one(site, conflict_id) for conflict_id in ids]
        found = [r for r in records if r is not None and r.unresolved]
    else:
        # Everything matching, as the operator asked: pages of LIMIT rows by id.
        found, before = await open_conflicts(site, wanted, None, LIMIT)
        while before is not None:
            more, before = await open_conflicts(site, wanted, before, LIMIT)
            found += more
    found.sort(key=lambda r: r.id)
    rejected = [r for r in found if r.conflict.outcome is ConflictOutcome.REJECTED]
    return ConflictPlan(
        rejected, [r for r in found if r.conflict.outcome is not ConflictOutcome.REJECTED]
    )


@dataclass
class Resolved:
    """What a resolution of a selection did."""

    done: list[int] = field(default_factory=list)
    released: list[tuple[str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    unfollowed: set[str] = field(default_factory=set)  # sites whose statuses were not set


async def resolve(
    site: ConsoleSite,
    selection: ConflictPlan,
    keep: Keep,
    confirmed: int | None,
    principal: str,
    label: str,
) -> Resolved:
    """Resolve the selection (keep mine or theirs) and write one audit line.

    The statuses of the writing site follow when the console knows that
    site's stores (this site, or a peer of an all-sites console).

    Raises:
        StaleCount: The selection no longer holds the confirmed count.
        LookupError: No main database or no mapped classes to apply ``mine``.
    """
    if confirmed is not None and len(selection.chosen) != confirmed:
        raise StaleCount(
            f"the selection now holds {len(selection.chosen)} conflict(s), not the "
            f"{confirmed} confirmed: look again and confirm the new count"
        )
    if site.engine is None or site.registry is None:
        raise LookupError(
            "resolving needs the main database and the mapped classes: set database_url "
            "and models (--models)"
        )
    outcome = Resolved()
    for found in selection.chosen:
        stores = site.peers.get(found.site, site if found.site == site.backend.site else None)
        try:
            resolution = await resolve_conflict(
                site.engine,
                site.registry,
                found.id,
                keep,
                statuses=None if stores is None else stores.backend.status,
                status_ttl=site.settings.status_ttl,
            )
        except (BufferingError, SQLAlchemyError, OSError) as exc:
            outcome.refused.append(f"{found.id}: {exc}")
            continue
        outcome.done.append(found.id)
        if stores is None:
            outcome.unfollowed.add(found.site)
        outcome.released += resolution.released
    ids = ", ".join(str(i) for i in outcome.done[:20])
    more = f" and {len(outcome.done) - 20} more" if len(outcome.done) > 20 else ""
    refused = f"; {len(outcome.refused)} refused" if outcome.refused else ""
    await record(
        site,
        principal,
        f"conflict-keep-{keep}",
        len(outcome.done),
        f"{label}: {ids}{more}; released {len(outcome.released)}{refused}",
    )
    return outcome
