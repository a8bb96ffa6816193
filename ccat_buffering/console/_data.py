"""What the console's pages show, read from the site's stores (the same data as the CLI)."""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ccat_buffering import audit
from ccat_buffering.console._samples import Samples
from ccat_buffering.console._site import ConsoleSite
from ccat_buffering.models import TransactionState, TransactionStatus
from ccat_buffering.protocols import (
    DeadLetter,
    SupportsInspection,
    SupportsLetterPaging,
    SupportsStatusPaging,
)
from ccat_buffering.replays import read_letter

__all__ = [
    "PAGE",
    "SCAN",
    "LetterFilter",
    "TransactionFilter",
    "letters_page",
    "matching_letters",
    "overview",
    "transaction_detail",
    "transactions_page",
]

PAGE = 50
"""Rows per page."""

SCAN = 5000
"""Statuses a filtered listing reads at most (it says so when it stops there)."""


def _iso(moment: dt.datetime | float | None) -> str | None:
    if moment is None:
        return None
    if isinstance(moment, float | int):
        moment = dt.datetime.fromtimestamp(moment, dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _median_seconds(pairs: Sequence[tuple[dt.datetime, dt.datetime | None]]) -> float | None:
    values = [(end - start).total_seconds() for start, end in pairs if end is not None]
    return statistics.median(values) if values else None


async def overview(site: ConsoleSite, samples: Samples) -> dict[str, Any]:
    """The site at a glance, and the charts' series."""
    health = await site.health()
    await samples.add(health)
    committed = await site.backend.status.get_many(
        await site.backend.status.ids(TransactionState.COMMITTED, limit=50)
    )
    replicated = await site.backend.status.get_many(
        await site.backend.status.ids(TransactionState.REPLICATED, limit=50)
    )
    memory = health.buffer.memory
    growth = samples.memory_growth()
    to_full = None
    if memory is not None and memory.limit_bytes and growth and growth > 0:
        to_full = max(memory.limit_bytes - memory.used_bytes, 0) / growth
    return {
        "health": health,
        "drain_rate": samples.drain_rate(),
        "to_commit": _median_seconds([(s.created_at, s.committed_at) for s in committed if s]),
        "to_visible": _median_seconds([(s.created_at, s.replicated_at) for s in replicated if s]),
        "time_to_full": to_full,
        "losses": [loss.describe() for loss in await site.buffer_losses()],
        "series": {name: samples.series(name) for name in ("depth", "in_flight", "processed")},
        "samples": len(samples.ring),
    }


@dataclass(frozen=True)
class TransactionFilter:
    """What the transactions page shows: a state and optional filters."""

    state: TransactionState = TransactionState.BUFFERED
    endpoint: str = ""
    text: str = ""  # in the id, endpoint or last error
    since: dt.datetime | None = None
    page: int = 0
    after: str = ""  # the cursor of a store that pages (empty: the first page)

    def matches(self, status: TransactionStatus) -> bool:
        """Whether ``status`` passes the filters (the state is given)."""
        if self.endpoint and status.endpoint != self.endpoint:
            return False
        if self.since is not None and status.created_at < self.since:
            return False
        if self.text:
            haystack = f"{status.transaction_id} {status.endpoint} {status.last_error or ''}"
            return self.text.lower() in haystack.lower()
        return True

    @property
    def filtered(self) -> bool:
        """Whether any filter beyond the state is set."""
        return bool(self.endpoint or self.text or self.since)


@dataclass
class Page:
    """One page of rows and where it stands."""

    rows: list[Any]
    page: int
    more: bool
    scanned: int | None = None  # a filtered listing stopped after this many
    counts: dict[str, int] = field(default_factory=dict)
    cursor: str | None = None  # where the next page starts, for a store that pages


async def transactions_page(site: ConsoleSite, wanted: TransactionFilter) -> Page:
    """One page of statuses in a state, in the store's order, filtered.

    With a store that pages from a cursor
    (:class:`~ccat_buffering.protocols.SupportsStatusPaging`), a page reads
    its own ids and statuses only: unfiltered, one page; filtered, slices of
    a page from the cursor until a page of matches is found or :data:`SCAN`
    statuses were looked at (the page then says so, and the next one goes on
    from there). Other stores list ids from the start of the state's index.
    """
    status = site.backend.status
    counts = {str(state): n for state, n in (await status.counts()).items()}
    if isinstance(status, SupportsStatusPaging):
        return await _paged(status, wanted, counts)
    start = wanted.page * PAGE
    if not wanted.filtered:
        ids = await status.ids(wanted.state, limit=start + PAGE + 1)
        rows = [s for s in await status.get_many(ids[start : start + PAGE]) if s is not None]
        return Page(rows, wanted.page, len(ids) > start + PAGE, counts=counts)
    ids = await status.ids(wanted.state, limit=SCAN)
    found: list[TransactionStatus] = []
    for first in range(0, len(ids), 500):
        found += [
            s
            for s in await status.get_many(ids[first : first + 500])
            if s is not None and wanted.matches(s)
        ]
        if len(found) > start + PAGE:
            break
    scanned = len(ids) if len(ids) >= SCAN else None
    return Page(
        found[start : start + PAGE], wanted.page, len(found) > start + PAGE, scanned, counts
    )


async def _paged(status: Any, wanted: TransactionFilter, counts: dict[str, int]) -> Page:
    cursor = wanted.after or None
    rows: list[TransactionStatus] = []
    looked = 0
    while True:
        ids, cursor = await status.ids_after(wanted.state, cursor, PAGE)
        looked += len(ids)
        rows += [s for s in await status.get_many(ids) if s is not None and wanted.matches(s)]
        if cursor is None or len(rows) >= PAGE or looked >= SCAN:
            break
    scanned = looked if cursor is not None and len(rows) < PAGE else None
    return Page(rows, wanted.page, cursor is not None, scanned, counts, cursor)


async def transaction_detail(site: ConsoleSite, transaction_id: str) -> dict[str, Any] | None:
    """A transaction's status, history, dead letter and payload (``None``: unknown)."""
    status = await site.backend.status.get(transaction_id)
    letter = await site.backend.dead_letters.get(transaction_id)
    payload = None
    if isinstance(site.backend, SupportsInspection):
        payload = await site.backend.find_payload(transaction_id)
    if payload is None and letter is not None:
        payload = letter.payload
    if status is None and letter is None and payload is None:
        return None
    try:
        shown = json.dumps(json.loads(payload), indent=2) if payload else None
    except json.JSONDecodeError:
        shown = payload
    return {
        "transaction_id": transaction_id,
        "status": status,
        "history": [] if status is None else list(status.history),
        "letter": letter,
        "payload": shown,
    }


@dataclass(frozen=True)
class LetterFilter:
    """Which dead letters: text in the id, reason or endpoint; a page."""

    text: str = ""
    page: int = 0
    after: str = ""  # the cursor of a store that pages (empty: the first page)

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` passes."""
        if not self.text:
            return True
        tx = read_letter(letter)
        haystack = f"{letter.letter_id} {letter.reason} {tx.endpoint if tx else ''}"
        return self.text.lower() in haystack.lower()


async def matching_letters(site: ConsoleSite, wanted: LetterFilter) -> list[DeadLetter]:
    """Every dead letter the filter matches, in arrival order (what an action on a filter takes)."""
    return [letter for letter in await site.backend.dead_letters.list() if wanted.matches(letter)]


async def letters_page(site: ConsoleSite, wanted: LetterFilter) -> Page:
    """One page of matching dead letters, each with its endpoint.

    With a store that pages from a cursor
    (:class:`~ccat_buffering.protocols.SupportsLetterPaging`), a page reads
    its own letters only, as :func:`transactions_page` does (filtered: slices
    from the cursor until a page of matches or :data:`SCAN` letters); the
    count shown is then the store's count of every letter, not of matches.
    Other stores read every letter and count the matches.
    """
    letters = site.backend.dead_letters
    cursor: str | None = None
    scanned = None
    if isinstance(letters, SupportsLetterPaging):
        found, cursor, looked = await _letters_paged(letters, wanted)
        scanned = looked if cursor is not None and len(found) < PAGE else None
        more = cursor is not None
        counts = {"letters": (await site.backend.buffer.stats()).dead_letters}
    else:
        every = await matching_letters(site, wanted)
        start = wanted.page * PAGE
        found, more = every[start : start + PAGE], len(every) > start + PAGE
        counts = {"matching": len(every)}
    rows = []
    for letter in found:
        tx = read_letter(letter)
        rows.append(
            {
                "letter": letter,
                "endpoint": tx.endpoint if tx else "(unreadable)",
                "at": _iso(letter.dead_lettered_at),
            }
        )
    return Page(rows, wanted.page, more, scanned, counts, cursor)


async def _letters_paged(
    letters: SupportsLetterPaging, wanted: LetterFilter
) -> tuple[list[DeadLetter], str | None, int]:
    cursor = wanted.after or None
    found: list[DeadLetter] = []
    looked = 0
    while True:
        page, cursor = await letters.letters_after(cursor, PAGE)
        looked += len(page)
        found += [letter for letter in page if wanted.matches(letter)]
        if cursor is None or len(found) >= PAGE or looked >= SCAN:
            return found, cursor, looked


async def audit_entries(site: ConsoleSite, limit: int = 100) -> list[audit.AuditEntry]:
    """The latest operators' actions, newest first."""
    return await audit.list(site.backend, limit)
