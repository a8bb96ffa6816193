"""Dead letters: ``dlq list | show | replay [--dry-run] | purge``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from ccat_buffering.buffer import audit
from ccat_buffering.buffer.protocols import DeadLetter
from ccat_buffering.buffer.replays import LetterRehearsal, rehearse, replay_set
from ccat_buffering.cli import _operator
from ccat_buffering.cli._app import dlq_app
from ccat_buffering.cli._common import (
    command,
    console,
    current,
    database_error,
    emit_json,
    fail,
    progress,
    registry_for,
    settings_for,
)
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor

__all__: list[str] = []

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
All = Annotated[bool, typer.Option("--all", help="Every dead letter.")]
Ids = Annotated[list[str] | None, typer.Argument(help="Letter ids (transaction ids).")]


def _when(seconds: float) -> str:
    """ISO 8601 in UTC, the same in the tables and in JSON."""
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _letter_json(letter: DeadLetter, *, payload: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "letter_id": letter.letter_id,
        "dead_lettered_at": _when(letter.dead_lettered_at),
        "reason": letter.reason,
    }
    if payload:
        try:
            data["payload"] = json.loads(letter.payload)
        except json.JSONDecodeError:
            data["payload"] = letter.payload  # an unreadable entry, as it was
    return data


@command(dlq_app, "list")
def list_command() -> None:
    """List dead letters in the order they arrived."""
    site = _operator.open_site(settings_for())

    async def run() -> list[DeadLetter]:
        async with site:
            return await site.backend.dead_letters.list()

    letters = asyncio.run(run())
    if current().as_json:
        emit_json([_letter_json(letter, payload=False) for letter in letters])
        return
    out = console()
    out.print(f"{len(letters)} dead letter(s)")
    if not letters:
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    width = max(len(letter.letter_id) for letter in letters)
    number = len(str(len(letters)))
    table.add_column("#", no_wrap=True, justify="right", min_width=number)
    # An id is what the operator copies into `dlq show`: never cut, never wrapped.
    # The reason gives way instead (`dlq show` has all of it, a pipe shows it whole).
    table.add_column("letter id", no_wrap=True, min_width=width)
    table.add_column("dead-lettered at", no_wrap=True, min_width=20)
    table.add_column("reason", no_wrap=True)
    room = max(out.width - number - width - 20 - 6, 12)
    for index, letter in enumerate(letters, 1):
        reason = letter.reason if len(letter.reason) <= room else letter.reason[: room - 1] + "…"
        table.add_row(str(index), letter.letter_id, _when(letter.dead_lettered_at), escape(reason))
    out.print(table)


@command(dlq_app, "show")
def show_command(letter_id: Annotated[str, typer.Argument(help="The letter's id.")]) -> None:
    """Show one dead letter with its reason and payload; exit 1 if there is none."""
    settings = settings_for()
    site = _operator.open_site(settings)

    async def run() -> DeadLetter | None:
        async with site:
            return await site.backend.dead_letters.get(letter_id)

    letter = asyncio.run(run())
    if letter is None:
        raise fail(f"no dead letter {letter_id} at site {settings.site_name}", 1, kind="NotFound")
    if current().as_json:
        emit_json(_letter_json(letter, payload=True))
        return
    out = console()
    out.print(
        f"[bold]{letter.letter_id}[/bold] dead-lettered at {_when(letter.dead_lettered_at)}",
        soft_wrap=True,
    )
    out.print(f"reason: {escape(letter.reason)}", soft_wrap=True)
    try:
        out.print_json(letter.payload)
    except json.JSONDecodeError:
        out.print(repr(letter.payload), soft_wrap=True)


def _ids(wanted: list[str] | None, done: list[str] | None) -> str:
    """The audit detail of a replay or purge: ``--all``, or the letters named."""
    named = "--all" if wanted is None else "letters " + " ".join(wanted)
    return named if done is None or wanted is None else f"{named}; replayed " + " ".join(done)


def _selection(ids: list[str] | None, every: bool, verb: str) -> list[str] | None:
    if every == bool(ids):
        raise typer.BadParameter(f"name the letters to {verb}, or pass --all (not both)")
    return None if every else list(ids or [])


def _confirmed(
    ids: list[str] | None, every: bool, yes: bool, verb: str, question: str
) -> tuple[list[str] | None, BufferingSettings, _operator.OperatorSite]:
    """The letters chosen, the settings and the site, once the operator said yes.

    ``question`` is asked with ``{what}`` and ``{site}`` filled in.
    """
    wanted = _selection(ids, every, verb)
    settings = settings_for()
    site = _operator.open_site(settings)
    what = "every dead letter" if wanted is None else f"{len(wanted)} dead letter(s)"
    if not yes:
        typer.confirm(question.format(what=what, site=settings.site_name), abort=True, err=True)
    return wanted, settings, site


DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Apply them at the main database in a transaction that is rolled back, and "
        "report per letter what would happen; replay nothing.",
    ),
]
Models = Annotated[
    str | None, typer.Option("--models", help="The mapped classes (package.module:Base).")
]


@command(dlq_app, "replay")
def replay_command(
    ids: Ids = None,
    every: All = False,
    yes: Yes = False,
    dry_run: DryRun = False,
    models: Models = None,
) -> None:
    """Put dead letters back at the head of the buffer, in their original buffer order.

    The letters named go back with their dependents among the dead letters
    (later letters writing the same records). Exits 1 when a named letter was
    not found (the message names it), or, with ``--dry-run``, when a letter
    would fail.
    """
    if dry_run:
        _rehearse(_selection(ids, every, "replay"), models)
        return
    wanted, settings, site = _confirmed(ids, every, yes, "replay", "Replay {what} at site {site}?")

    async def run() -> list[str]:
        async with site:
            with progress(quiet=current().as_json) as report:
                # One atomic step: the letters and their dependents keep their order.
                done = await site.manager.replay(wanted)
                report("replaying", len(done), len(done))
            await audit.record(
                site.backend, action="dlq.replay", count=len(done), detail=_ids(wanted, done)
            )
            return done

    done = asyncio.run(run())
    unknown = [] if wanted is None else [i for i in wanted if i not in set(done)]
    if current().as_json:
        emit_json({"replayed": done, "not_found": unknown})
    else:
        Console().print(f"replayed {len(done)} transaction(s), to the head of the buffer")
        for letter_id in unknown:
            Console(stderr=True).print(
                f"no dead letter {escape(letter_id)} at site {settings.site_name}"
            )
    if unknown:
        raise typer.Exit(1)


def _rehearse(wanted: list[str] | None, models: str | None) -> None:
    """``dlq replay --dry-run``: what each letter would do at the main database now."""
    settings = settings_for(models)
    registry = registry_for(settings)
    url = settings.require_url("database_url")
    site = _operator.open_site(settings)

    async def run() -> tuple[list[LetterRehearsal], list[str]]:
        engine = create_engine(url)
        try:
            async with site:
                letters = replay_set(await site.backend.dead_letters.list(), wanted)
                executor = TransactionExecutor(engine, registry, site=settings.site_name)
                found = {letter.letter_id for letter in letters}
                missing = [i for i in wanted or [] if i not in found]
                return await rehearse(executor, letters), missing
        except (OSError, SQLAlchemyError) as exc:
            raise database_error(exc, url) from exc
        finally:
            await engine.dispose()

    reports, missing = asyncio.run(run())
    failing = [r for r in reports if r.outcome == "fails"]
    if current().as_json:
        emit_json({"dry_run": [r.as_dict() for r in reports], "not_found": missing})
    else:
        out = console()
        out.print(
            f"dry run: {len(reports)} letter(s) in replay order, {len(failing)} would fail; "
            "the main database was not changed",
            soft_wrap=True,
        )
        for number, r in enumerate(reports, 1):
            why = f": {escape(r.error)}" if r.error else ""
            out.print(f"{number:>3}  {r.letter_id}  {r.outcome}{why}", soft_wrap=True)
        for letter_id in missing:
            console(stderr=True).print(f"no dead letter {escape(letter_id)}")
    if failing or missing:
        raise typer.Exit(1)


@command(dlq_app, "purge")
def purge_command(ids: Ids = None, every: All = False, yes: Yes = False) -> None:
    """Delete dead letters for good."""
    wanted, _settings, site = _confirmed(
        ids, every, yes, "purge", "Delete {what} at site {site} for good?"
    )

    async def run() -> int:
        async with site:
            purged = await site.backend.dead_letters.purge(wanted)
            await audit.record(
                site.backend, action="dlq.purge", count=purged, detail=_ids(wanted, None)
            )
            return purged

    purged = asyncio.run(run())
    if current().as_json:
        emit_json({"purged": purged})
    else:
        Console().print(f"purged {purged} dead letter(s)")
