"""The operator's pause of a site's drain: ``pause`` and ``resume``."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.markup import escape

from ccat_buffering.cli import _operator
from ccat_buffering.cli._app import app
from ccat_buffering.cli._common import command, console, current, emit_json, settings_for
from ccat_buffering.drain import operator_pause

__all__: list[str] = []


@command(app, "pause")
def pause_command(
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why, shown in status and the audit log.")
    ] = "",
) -> None:
    """Pause the site's drain until `resume` (kept in the buffer: survives a restart).

    The worker finishes its batch in flight and then claims nothing; services
    keep buffering. Recorded in the audit log.
    """
    site = _operator.open_site(settings_for())

    async def run() -> operator_pause.OperatorPause:
        async with site:
            return await operator_pause.pause(site.backend, reason=reason)

    held = asyncio.run(run())
    if current().as_json:
        emit_json({"paused": True, "cause": held.cause, **held.model_dump()})
    else:
        console().print(escape(held.cause), soft_wrap=True)


@command(app, "resume")
def resume_command() -> None:
    """Let the site's drain go on after `pause`. Recorded in the audit log."""
    site = _operator.open_site(settings_for())

    async def run() -> operator_pause.OperatorPause | None:
        async with site:
            return await operator_pause.resume(site.backend)

    was = asyncio.run(run())
    if current().as_json:
        emit_json({"paused": False, "was": None if was is None else was.cause})
    elif was is None:
        console().print("the drain was not paused")
    else:
        console().print(f"resumed; it was {escape(was.cause)}", soft_wrap=True)
