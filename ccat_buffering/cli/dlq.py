"""Fixing a site: ``dlq list | show | replay | purge`` and ``keys audit``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ccat_buffering.cli._app import dlq_app, keys_app
from ccat_buffering.cli._common import operator_site, progress
from ccat_buffering.protocols import DeadLetter, SupportsKeyAudit

__all__: list[str] = []

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
All = Annotated[bool, typer.Option("--all", help="Every dead letter.")]
Ids = Annotated[list[str] | None, typer.Argument(help="Letter ids (transaction ids).")]


def _when(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def _letters() -> list[DeadLetter]:
    _, site = operator_site()

    async def run() -> list[DeadLetter]:
        async with site:
            return await site.backend.dead_letters.list()

    return asyncio.run(run())


@dlq_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List dead letters in the order they arrived."""
    letters = _letters()
    if as_json:
        print(json.dumps([{**letter.__dict__, "payload": None} for letter in letters]))
        return
    table = Table(title=f"{len(letters)} dead letter(s)", title_justify="left")
    for column in ("#", "letter id", "dead-lettered at", "reason"):
        table.add_column(column)
    for index, letter in enumerate(letters, 1):
        table.add_row(
            str(index),
            letter.letter_id,
            _when(letter.dead_lettered_at),
            escape(letter.reason[:120]),
        )
    Console().print(table)


@dlq_app.command("show")
def show_command(letter_id: Annotated[str, typer.Argument(help="The letter's id.")]) -> None:
    """Show one dead letter with its reason and payload."""
    settings, site = operator_site()

    async def run() -> DeadLetter | None:
        async with site:
            return await site.backend.dead_letters.get(letter_id)

    letter = asyncio.run(run())
    if letter is None:
        Console(stderr=True).print(f"no dead letter {letter_id} at site {settings.site_name}")
        raise typer.Exit(1)
    console = Console()
    console.print(
        f"[bold]{letter.letter_id}[/bold] dead-lettered at {_when(letter.dead_lettered_at)}"
    )
    console.print(f"reason: {escape(letter.reason)}")
    try:
        console.print_json(letter.payload)
    except json.JSONDecodeError:
        console.print(repr(letter.payload))


def _selection(ids: list[str] | None, every: bool, verb: str) -> list[str] | None:
    if every == bool(ids):
        raise typer.BadParameter(f"name the letters to {verb}, or pass --all (not both)")
    return None if every else list(ids or [])


@dlq_app.command("replay")
def replay_command(ids: Ids = None, every: All = False, yes: Yes = False) -> None:
    """Put dead letters back at the tail of the buffer, in the order they arrived."""
    wanted = _selection(ids, every, "replay")
    settings, site = operator_site()
    what = "every dead letter" if wanted is None else f"{len(wanted)} dead letter(s)"
    if not yes:
        typer.confirm(f"Replay {what} at site {settings.site_name}?", abort=True)

    async def run() -> list[str]:
        async with site:
            letters = await site.backend.dead_letters.list()
            chosen = [
                letter.letter_id
                for letter in letters
                if wanted is None or letter.letter_id in set(wanted)
            ]
            done: list[str] = []
            with progress() as report:
                # In arrival order, a slice at a time, each slice after the last.
                for start in range(0, len(chosen), 100):
                    done += await site.manager.replay(chosen[start : start + 100])
                    report("replaying", len(done), len(chosen))
            return done

    done = asyncio.run(run())
    Console().print(f"replayed {len(done)} transaction(s)")
    if wanted is not None and len(done) < len(wanted):
        raise typer.Exit(1)


@dlq_app.command("purge")
def purge_command(ids: Ids = None, every: All = False, yes: Yes = False) -> None:
    """Delete dead letters for good."""
    wanted = _selection(ids, every, "purge")
    settings, site = operator_site()
    what = "every dead letter" if wanted is None else f"{len(wanted)} dead letter(s)"
    if not yes:
        typer.confirm(f"Delete {what} at site {settings.site_name} for good?", abort=True)

    async def run() -> int:
        async with site:
            return await site.backend.dead_letters.purge(wanted)

    Console().print(f"purged {asyncio.run(run())} dead letter(s)")


@keys_app.command("audit")
def audit_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List keys of the site that have no TTL and are not one of its bounded structures."""
    _, site = operator_site()
    backend = site.backend
    if not isinstance(backend, SupportsKeyAudit):
        if as_json:
            print("[]")
        else:
            Console().print(f"the {type(backend).__name__} keeps no keys to audit")
        return

    async def run() -> list[dict[str, object]]:
        async with site:
            return [info.__dict__ for info in await backend.audit_keys()]

    leaks = asyncio.run(run())
    if as_json:
        print(json.dumps(leaks))
    else:
        Console().print(f"{len(leaks)} key(s) without a TTL")
        for leak in leaks:
            Console().print(f"  {leak['key']} ({leak['kind']})")
    raise typer.Exit(1 if leaks else 0)
