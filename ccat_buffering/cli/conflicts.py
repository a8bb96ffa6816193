"""Conflicts between writers: ``conflicts list | show | resolve``.

They read the conflict log in the main database (``database_url``), so they
work from any machine that reaches it; ``resolve`` also sets the statuses of
the site named by the settings when the conflict is that site's.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from ccat_buffering.cli._app import conflicts_app
from ccat_buffering.cli._common import (
    command,
    console,
    current,
    database_error,
    emit_json,
    fail,
    registry_for,
    settings_for,
)
from ccat_buffering.conflicts.log import ConflictRecord, get_conflict, list_conflicts
from ccat_buffering.drain.database import create_engine
from ccat_buffering.site.coordinator import BufferingCoordinator

__all__: list[str] = []

T = TypeVar("T")


class KeepChoice(enum.StrEnum):
    """Which write an operator keeps."""

    MINE = "mine"
    THEIRS = "theirs"


def _read(query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    url = settings_for(site=False).require_url("database_url")

    async def run() -> T:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return await query(conn)
        except (OSError, SQLAlchemyError) as exc:
            raise database_error(exc, url) from exc
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _line(record: ConflictRecord) -> dict[str, Any]:
    return record.as_json()


@command(conflicts_app, "list")
def list_command(
    every: Annotated[
        bool, typer.Option("--all", help="Resolved and decided ones too, not only unresolved.")
    ] = False,
    of_site: Annotated[
        str | None, typer.Option("--of-site", help="Only this site's conflicts.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1)] = 100,
) -> None:
    """List conflicts, newest first: by default those waiting for an operator.

    Exits 1 while any conflict is unresolved.
    """
    records = _read(
        lambda conn: list_conflicts(conn, site=of_site, unresolved_only=not every, limit=limit)
    )
    unresolved = [r for r in records if r.unresolved]
    if current().as_json:
        emit_json([_line(r) for r in records])
    else:
        out = console()
        out.print(f"{len(unresolved)} unresolved conflict(s)")
        if records:
            table = Table(box=None, pad_edge=False, header_style="bold")
            for name in ("id", "site", "transaction", "model", "kind", "policy", "outcome"):
                table.add_column(name, no_wrap=True)
            table.add_column("key")
            for r in records:
                c = r.conflict
                table.add_row(
                    str(r.id),
                    escape(r.site),
                    r.transaction_id,
                    escape(c.model),
                    str(c.kind),
                    str(c.policy),
                    str(c.outcome) + ("" if r.resolved_at is None else " (resolved)"),
                    escape(str(dict(c.key))),
                )
            out.print(table)
    if unresolved:
        raise typer.Exit(1)


@command(conflicts_app, "show")
def show_command(conflict_id: Annotated[int, typer.Argument(help="The conflict's id.")]) -> None:
    """Show one conflict: base, mine and theirs per field; exit 1 if there is none."""
    record = _read(lambda conn: get_conflict(conn, conflict_id))
    if record is None:
        raise fail(f"there is no conflict {conflict_id}", 1, kind="NotFound")
    if current().as_json:
        emit_json(_line(record))
        return
    c = record.conflict
    out = console()
    out.print(
        f"[bold]conflict {record.id}[/bold]: {c.kind} on {escape(c.model)} "
        f"{escape(str(dict(c.key)))}",
        soft_wrap=True,
    )
    out.print(
        f"site {escape(record.site)}, transaction {record.transaction_id} "
        f"({escape(record.endpoint)}), step {escape(c.step_id)}",
        soft_wrap=True,
    )
    out.print(f"policy {c.policy}: {c.outcome}, found {record.detected_at.isoformat()}")
    if record.resolved_at is not None:
        out.print(f"resolved {record.resolved_at.isoformat()}")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("field", "base", "mine", "theirs"):
        table.add_column(name)
    for name in sorted(set(c.base) | set(c.mine) | set(c.theirs)):
        table.add_row(
            escape(name),
            escape(repr(c.base.get(name))),
            escape(repr(c.mine.get(name))),
            escape(repr(c.theirs.get(name))),
        )
    out.print(table)


@command(conflicts_app, "resolve")
def resolve_command(
    conflict_id: Annotated[int, typer.Argument(help="The conflict's id.")],
    keep: Annotated[
        KeepChoice,
        typer.Option(
            "--keep",
            help="mine: apply the transaction without its base check; theirs: drop it.",
            case_sensitive=False,
        ),
    ],
    models: Annotated[
        str | None,
        typer.Option(help="The mapped classes: package.module:Base.", metavar="MODULE:BASE"),
    ] = None,
) -> None:
    """Resolve a conflict, then apply what waited behind it in buffer order."""
    settings = settings_for(models)
    registry = registry_for(settings)

    async def run() -> Any:
        async with BufferingCoordinator.from_settings(
            settings, registry=registry, start=False
        ) as site:
            return await site.resolve_conflict(conflict_id, keep.value)

    resolution = asyncio.run(run())
    if current().as_json:
        emit_json(
            {
                "conflict_id": resolution.conflict_id,
                "transaction_id": resolution.transaction_id,
                "keep": resolution.keep,
                "released": [{"transaction_id": t, "fate": f} for t, f in resolution.released],
            }
        )
        return
    out = Console()
    verb = "applied" if resolution.keep == "mine" else "dropped"
    out.print(f"conflict {conflict_id}: kept {resolution.keep}; {resolution.transaction_id} {verb}")
    for tx_id, fate in resolution.released:
        out.print(f"released {tx_id}: {escape(fate)}")
