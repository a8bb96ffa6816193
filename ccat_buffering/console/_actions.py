"""The console's actions: replay, dry-run replay, purge, pause, resume, each audited.

An action on *everything matching a filter* is taken in two steps: the
first call counts what it would touch (:func:`plan`), the operator confirms
that count, and the second call takes the action only if the filter still
matches exactly that many (so that a letter that arrived in between is not
swept up unseen). Every action that changed something is recorded with
:func:`record`, the one place that writes the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ccat_buffering.buffer import audit
from ccat_buffering.buffer.protocols import DeadLetter
from ccat_buffering.buffer.replays import LetterRehearsal, rehearse, replay_set
from ccat_buffering.console._data import LetterFilter, matching_letters
from ccat_buffering.console._site import ConsoleSite
from ccat_buffering.drain import operator_pause

__all__ = ["Plan", "StaleCount", "dry_run", "pause", "plan", "purge", "record", "replay", "resume"]


class StaleCount(Exception):
    """The filter no longer matches the count the operator confirmed."""


@dataclass(frozen=True)
class Plan:
    """What an action on a selection would touch.

    Attributes:
        chosen: The letters selected (by id or by the filter).
        replayed: With their dependents, in replay order (for a replay).
    """

    chosen: list[DeadLetter]
    replayed: list[DeadLetter]


async def record(site: ConsoleSite, principal: str, action: str, count: int, detail: str) -> None:
    """Write one audit line for a console action (the single place that does)."""
    await audit.record(
        site.backend, action=f"console.{action}", count=count, principal=principal, detail=detail
    )


async def plan(site: ConsoleSite, ids: Sequence[str], wanted: LetterFilter | None) -> Plan:
    """The letters named by ``ids``, or matching ``wanted`` when no id is given."""
    if ids:
        every = await site.backend.dead_letters.list()
        chosen = [letter for letter in every if letter.letter_id in set(ids)]
    else:
        every = await site.backend.dead_letters.list()
        chosen = await matching_letters(site, wanted or LetterFilter())
    return Plan(chosen, replay_set(every, [letter.letter_id for letter in chosen]))


def _check(count: int, confirmed: int | None) -> None:
    if confirmed is not None and count != confirmed:
        raise StaleCount(
            f"the selection now holds {count} letter(s), not the {confirmed} confirmed: "
            "look again and confirm the new count"
        )


def _ids(letters: Sequence[DeadLetter]) -> str:
    shown = ", ".join(letter.letter_id for letter in letters[:20])
    return shown + (f" and {len(letters) - 20} more" if len(letters) > 20 else "")


async def replay(
    site: ConsoleSite, selection: Plan, confirmed: int | None, principal: str, label: str
) -> list[str]:
    """Replay the selection with its dependents (to the head, in original order)."""
    _check(len(selection.replayed), confirmed)
    done = await site.manager.replay([letter.letter_id for letter in selection.chosen])
    await record(site, principal, "replay", len(done), f"{label}: {_ids(selection.replayed)}")
    return done


async def dry_run(site: ConsoleSite, selection: Plan, principal: str) -> list[LetterRehearsal]:
    """Apply the selection at the main database in a rolled-back transaction."""
    if site.executor is None:
        raise LookupError("a dry run needs the main database: set database_url and models")
    reports = await rehearse(site.executor, selection.replayed)
    failing = sum(r.outcome == "fails" for r in reports)
    await record(
        site, principal, "replay-dry-run", len(reports), f"{failing} would fail; nothing changed"
    )
    return reports


async def purge(
    site: ConsoleSite, selection: Plan, confirmed: int | None, principal: str, label: str
) -> int:
    """Delete the selected letters for good."""
    _check(len(selection.chosen), confirmed)
    purged = await site.backend.dead_letters.purge(
        [letter.letter_id for letter in selection.chosen]
    )
    await record(site, principal, "purge", purged, f"{label}: {_ids(selection.chosen)}")
    return purged


async def pause(site: ConsoleSite, reason: str, principal: str) -> operator_pause.OperatorPause:
    """Pause the site's drain (audited by :mod:`ccat_buffering.drain.operator_pause`)."""
    return await operator_pause.pause(site.backend, reason=reason, principal=principal)


async def resume(site: ConsoleSite, principal: str) -> operator_pause.OperatorPause | None:
    """Resume the site's drain (audited by :mod:`ccat_buffering.drain.operator_pause`)."""
    return await operator_pause.resume(site.backend, principal=principal)
