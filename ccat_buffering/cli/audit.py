"""The audit log: ``audit`` lists what operators did to the site, newest first."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ccat_buffering.buffer import audit
from ccat_buffering.cli import _operator
from ccat_buffering.cli._app import app
from ccat_buffering.cli._common import command, console, current, emit_json, settings_for

__all__: list[str] = []


def table(entries: list[audit.AuditEntry], title: str | None = None) -> Table:
    """The entries as a table: when, who, what, how many, detail."""
    out = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold")
    for name in ("when", "who", "action", "count"):
        out.add_column(name, no_wrap=True)
    out.add_column("detail", overflow="fold")
    for entry in entries:
        out.add_row(
            entry.when,
            escape(entry.principal),
            escape(entry.action),
            str(entry.count),
            escape(entry.detail),
        )
    return out


@command(app, "audit")
def audit_command(
    limit: Annotated[
        int, typer.Option(min=1, metavar="N", help="Show at most N entries, newest first.")
    ] = 50,
) -> None:
    """List the operators' actions on the site (replay, purge, acknowledge-loss, ...).

    Each entry says who (OS user and host, or the service's caller), what,
    how many items and when. The log is kept in the buffer's store, so it
    works while the main database is down.
    """
    site = _operator.open_site(settings_for())

    async def run() -> list[audit.AuditEntry]:
        async with site:
            return await audit.list(site.backend, limit)

    entries = asyncio.run(run())
    if current().as_json:
        emit_json([audit.as_json(entry) for entry in entries])
        return
    out = console()
    out.print(f"{len(entries)} audit entr{'y' if len(entries) == 1 else 'ies'}, newest first")
    if entries:
        out.print(table(entries))
