"""The backend's keys: ``keys audit``."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.markup import escape

from ccat_buffering.buffer.protocols import SupportsKeyAudit
from ccat_buffering.cli import _operator
from ccat_buffering.cli._app import keys_app
from ccat_buffering.cli._common import command, console, current, emit_json, settings_for
from ccat_buffering.cli._progress import audit_progress

__all__: list[str] = []


@command(keys_app, "audit")
def audit_command() -> None:
    """List keys of the site that have no TTL and are not one of its bounded structures.

    Exits 1 when it lists a key.
    """
    site = _operator.open_site(settings_for())
    backend = site.backend
    if not isinstance(backend, SupportsKeyAudit):
        asyncio.run(backend.aclose())
        if current().as_json:
            emit_json([])
        else:
            Console().print(f"the {type(backend).__name__} keeps no keys to audit")
        return

    async def run() -> list[dict[str, object]]:
        async with site:
            with audit_progress() as progress:  # a bar on stderr, on a terminal
                leaks = await backend.audit_keys(progress)
            return [info.__dict__ for info in leaks]

    leaks = asyncio.run(run())
    if current().as_json:
        emit_json(leaks)
    else:
        out = console()
        out.print(f"{len(leaks)} key(s) without a TTL")
        for leak in leaks:
            # The key last and soft-wrapped: the terminal wraps it, nothing cuts it.
            out.print(f"  {leak['kind']:<8} {escape(str(leak['key']))}", soft_wrap=True)
    raise typer.Exit(1 if leaks else 0)
