"""The ``ccat-buffering`` command."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from ccat_buffering.simulation import SimulationSummary, simulate

__all__ = ["app", "main"]

app = typer.Typer(
    name="ccat-buffering",
    help="Buffer a remote site's writes and drain them into the main database.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _summary_table(summary: SimulationSummary) -> Table:
    table = Table(title="simulated outage: buffer, restore, drain, confirm")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in summary.model_dump().items():
        table.add_row(name.replace("_", " "), str(value))
    table.add_row("verdict", "[green]ok[/green]" if summary.ok else "[red]FAILED[/red]")
    return table


@app.command("simulate")
def simulate_command(
    observations: Annotated[
        int, typer.Option(help="Observations to record; two transactions each.")
    ] = 1000,
    poison: Annotated[int, typer.Option(help="Transactions built to fail (dead-lettered).")] = 2,
    backend_url: Annotated[str, typer.Option(help="Where to buffer.")] = "memory://",
    database_url: Annotated[
        str | None, typer.Option(help="Main database; a temporary SQLite file by default.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random values.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run a site through an outage: buffer, restore the database, drain, confirm, count."""
    console = Console(stderr=True)
    interactive = console.is_terminal and not as_json
    if interactive:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), console=console
        ) as bar:
            tasks: dict[str, object] = {}

            def show(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                bar.update(tasks[phase], completed=done)  # type: ignore[arg-type]

            summary = asyncio.run(
                simulate(
                    observations,
                    poison=poison,
                    backend_url=backend_url,
                    database_url=database_url,
                    seed=seed,
                    progress=show,
                )
            )
    else:
        last: dict[str, int] = {}

        def plain(phase: str, done: int, total: int) -> None:
            step = max(total // 4, 1)
            if as_json or done // step == last.get(phase, -1):
                return
            last[phase] = done // step
            print(f"{phase}: {done}/{total}", file=sys.stderr)

        summary = asyncio.run(
            simulate(
                observations,
                poison=poison,
                backend_url=backend_url,
                database_url=database_url,
                seed=seed,
                progress=plain,
            )
        )
    if as_json:
        print(json.dumps(summary.model_dump()))
    else:
        Console().print(_summary_table(summary))
    raise typer.Exit(0 if summary.ok else 1)


@app.callback()
def _root() -> None:
    """Buffer a remote site's writes and drain them into the main database."""


def main() -> None:
    """Entry point of the ``ccat-buffering`` command."""
    app()
