"""Seeing a site: ``status`` (a probe too) and ``inspect <transaction-id>``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ccat_buffering.buffer import audit as audit_log
from ccat_buffering.buffer.protocols import AuditProgress
from ccat_buffering.cli import _common as common
from ccat_buffering.cli import _operator
from ccat_buffering.cli._app import app
from ccat_buffering.cli._common import command, current, emit_json, fail, settings_for
from ccat_buffering.cli._inspection import inspect_transaction
from ccat_buffering.cli._progress import audit_progress
from ccat_buffering.cli.audit import table as audit_table
from ccat_buffering.observe.health import Health, as_json

__all__ = ["MIN_INTERVAL", "render"]

MIN_INTERVAL = 0.5
"""The shortest ``--interval``: each refresh reads the stores (and scans keys)."""

Models = Annotated[
    str | None, typer.Option(help="The mapped classes: package.module:Base.", metavar="MODULE:BASE")
]


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _section(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", min_width=60)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")  # ids and URLs wrap, never end in "…"
    for name, value in rows:
        table.add_row(name, escape("-" if value is None else str(value)))
    return table


def _memory_rows(health: Health) -> list[tuple[str, Any]]:
    memory = health.buffer.memory
    if memory is None:
        return []
    limit = "unlimited" if memory.limit_bytes is None else f"{memory.limit_bytes / 2**20:,.1f} MiB"
    rows: list[tuple[str, Any]] = [
        ("memory", f"{memory.used_bytes / 2**20:,.1f} MiB of {limit} ({memory.policy or '?'})"),
    ]
    if memory.bytes_per_transaction is not None:
        rows.append(("per transaction", f"{memory.bytes_per_transaction:,.0f} B (measured)"))
    if memory.buffering_per_second is not None:
        rows.append(("buffering", f"{memory.buffering_per_second:,.2f} tx/s lately"))
    if memory.full_in_seconds is not None:
        rows.append(("full in", _seconds(memory.full_in_seconds) + " at that rate"))
    return rows


def render(health: Health) -> Group:
    """The health as rich tables, for a terminal."""
    buffer, worker, replication = health.buffer, health.processor, health.replication
    state = str(worker.state) + (f" ({worker.cause})" if worker.cause else "")
    parts: list[Any] = [
        _section(
            f"site {health.site} ({health.site_type}) on {health.backend}",
            [
                ("queue depth", buffer.depth),
                ("in flight", buffer.in_flight),
                ("retry held for", _seconds(buffer.retry_held_seconds)),
                ("dead letters", buffer.dead_letters),
                ("unresolved conflicts", health.conflicts),
                ("oldest waiting", _seconds(buffer.oldest_waiting_seconds)),
                ("statuses", ", ".join(f"{k} {v}" for k, v in health.states.items() if v) or "-"),
                *_memory_rows(health),
            ],
        ),
        _section(
            "processor",
            [
                ("state", state),
                ("lease holder", worker.lease_holder),
                ("last run", worker.last_run_at),
                ("processed", worker.processed),
                ("retried / conflicts", f"{worker.retried} / {worker.conflicts}"),
                ("conflicted", worker.conflicted),
                ("dead-lettered", worker.dead_lettered),
                ("outage pauses", worker.outages),
            ],
        ),
        _section(
            f"replication ({health.replica or health.database or 'no replica configured'})",
            [
                ("replay LSN", replication.replay_lsn),
                ("standby", replication.standby),
                ("lag", f"{replication.lag_bytes or 0} bytes, {_seconds(replication.lag_seconds)}"),
                ("pending", replication.pending),
                ("oldest pending", _seconds(replication.oldest_pending_seconds)),
            ],
        ),
    ]
    if health.actions:
        parts.append(audit_table(health.actions, "latest operator actions (ccat-buffering audit)"))
    if health.warnings:
        warnings = Table(title="warnings", show_header=False, title_justify="left", min_width=60)
        warnings.add_column("warning", style="yellow")
        for warning in health.warnings:
            warnings.add_row(escape(warning))
        parts.append(warnings)
    else:
        parts.append("[green]healthy[/green]")
    return Group(*parts)


def _render_loop_pipe(health: Health, console: Console) -> None:
    console.print(f"--- {health.checked_at.isoformat(timespec='seconds')}")
    console.print(render(health))
    console.file.flush()


@command(app, "status")
def status_command(
    models: Models = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float,
        typer.Option(min=MIN_INTERVAL, metavar="SECONDS", help="Seconds between refreshes."),
    ] = 2.0,
    audit: Annotated[
        bool,
        typer.Option(help="Also look for keys without a TTL (scans every key: slow when large)."),
    ] = False,
    acknowledge_loss: Annotated[
        bool,
        typer.Option(
            "--acknowledge-loss",
            help="Mark the recorded losses of buffered state as seen (after resubmitting).",
        ),
    ] = False,
) -> None:
    """Show the site: buffer, processor, replication and warnings; exit 1 on warnings.

    With --watch it refreshes every --interval seconds until Ctrl-C (then
    exits 0): in place on a terminal, a new table per refresh in a pipe, and
    one JSON document per line (NDJSON) with --json.
    """
    json_output = current().as_json
    site = _operator.open_site(
        settings_for(models), replica=True, database=True, lean_database=not acknowledge_loss
    )
    acknowledging = [acknowledge_loss]

    async def once(progress: AuditProgress | None = None) -> Health:
        if acknowledging[0]:
            acknowledging[0] = False
            count = await site.acknowledge_losses()
            await audit_log.record(site.backend, action="status.acknowledge-loss", count=count)
            Console(stderr=True).print(f"acknowledged {count} loss(es) of buffered state")
        if progress is None:
            return await site.health(audit=audit)
        return await site.health(audit=audit, audit_progress=progress)

    async def watching() -> None:
        async with site:
            console = common.console()
            if json_output or not console.is_terminal:
                while True:
                    health = await once()
                    if json_output:
                        emit_json(as_json(health))
                    else:
                        _render_loop_pipe(health, console)
                    await asyncio.sleep(interval)
            first = await once()
            with Live(render(first), console=console, auto_refresh=False) as live:
                while True:
                    await asyncio.sleep(interval)
                    live.update(render(await once()), refresh=True)

    if watch:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the watch
            asyncio.run(watching())
        raise typer.Exit(0)

    async def single() -> Health:
        async with site:
            if not audit:
                return await once()
            with audit_progress() as progress:  # a bar on stderr, on a terminal
                return await once(progress)

    health = asyncio.run(single())
    if json_output:
        emit_json(as_json(health))
    else:
        common.console().print(render(health))
    raise typer.Exit(0 if health.healthy else 1)


@command(app, "inspect")
def inspect_command(
    transaction_id: Annotated[str, typer.Argument(help="The transaction's id.")],
    models: Models = None,
) -> None:
    """Show one transaction: status history, attempts, errors, LSN, payload and keys.

    Exits 1 when the site knows nothing of the transaction.
    """
    settings = settings_for(models)
    site = _operator.open_site(settings, database=True)

    async def run() -> dict[str, Any] | None:
        async with site:
            return await inspect_transaction(site, transaction_id)

    found = asyncio.run(run())
    if found is None:
        raise fail(
            f"no transaction {transaction_id} at site {settings.site_name}", 1, kind="NotFound"
        )
    if current().as_json:
        emit_json(found)
        return
    console = common.console()
    status = found["status"] or {}
    console.print(
        _section(
            f"transaction {transaction_id}",
            [
                ("state", status.get("state")),
                ("endpoint", status.get("endpoint")),
                ("attempts", status.get("attempts")),
                ("last error", status.get("last_error")),
                ("commit LSN", status.get("commit_lsn")),
                ("dead letter", (found["dead_letter"] or {}).get("reason")),
            ],
        )
    )
    events = [
        (h["at"], h["event"] + (f": {h['note']}" if h.get("note") else ""))
        for h in found["history"]
    ]
    console.print(_section("history", events))
    for note in found["unchecked"]:
        console.print(f"[yellow]{escape(note)}[/yellow]", soft_wrap=True)
    console.print(f"keys ({len(found['keys'])})")
    for key in found["keys"]:
        ttl = _seconds(key["ttl_seconds"]) if key["ttl_seconds"] is not None else "none"
        # The key last and soft-wrapped: it holds the id, the terminal wraps it, nothing cuts it.
        console.print(f"  {key['kind']:<8} {ttl:>9}  {escape(key['key'])}", soft_wrap=True)
    if found["payload"] is not None:
        console.print_json(json.dumps(found["payload"]))
    for loss in found["buffer_losses"]:
        console.print(f"[yellow]{escape(loss)}[/yellow]")
