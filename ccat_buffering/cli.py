"""The ``ccat-buffering`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from ccat_buffering.coordinator import BufferingCoordinator
from ccat_buffering.executor import LEDGER_TABLE_NAME, TransactionExecutor, create_engine
from ccat_buffering.logs import FORMAT, SiteLogger, install
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.settings import BufferingSettings, mask_url
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
    replica_url: Annotated[
        str | None, typer.Option(help="The site's streaming replica, for LSN tracking.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random values.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
) -> None:
    """Run a site through an outage: buffer, restore the database, drain, confirm, count."""
    _configure_logging(verbose)
    if not verbose:
        # Retries and pauses are the point of the scenario; the summary counts them.
        logging.getLogger("ccat_buffering").setLevel(logging.ERROR)
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
                    replica_url=replica_url,
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
                replica_url=replica_url,
                seed=seed,
                progress=plain,
            )
        )
    if as_json:
        print(json.dumps(summary.model_dump()))
    else:
        Console().print(_summary_table(summary))
    raise typer.Exit(0 if summary.ok else 1)


db_app = typer.Typer(help="The main database's side of buffering.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format=FORMAT, stream=sys.stderr
    )
    install()


def _settings(models: str | None) -> BufferingSettings:
    settings = BufferingSettings()
    if models:
        settings = settings.model_copy(update={"models": models})
    return settings


def _registry(settings: BufferingSettings) -> ModelRegistry:
    if not settings.models:
        raise typer.BadParameter(
            "name the mapped classes with --models package.module:Base or CCAT_BUFFERING_MODELS",
            param_hint="--models",
        )
    return ModelRegistry.from_import_path(settings.models)


async def run_worker(settings: BufferingSettings, registry: ModelRegistry) -> None:
    """Run the processor and the replication tracker until SIGTERM or SIGINT.

    Args:
        settings: The site's settings.
        registry: The mapped classes.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log = SiteLogger("ccat_buffering.worker", settings.site_name)
    async with BufferingCoordinator.from_settings(settings, registry=registry) as site:
        log.info("worker %s started (%s)", site.processor.holder, site.describe())
        await stop.wait()
        log.info("stopping after the current batch")
    log.info("worker stopped")


@app.command("worker")
def worker_command(
    models: Annotated[
        str | None, typer.Option(help="The mapped classes: package.module:Base.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
) -> None:
    """Drain the site's buffer and confirm replication until stopped (SIGTERM, Ctrl-C)."""
    _configure_logging(verbose)
    settings = _settings(models)
    asyncio.run(run_worker(settings, _registry(settings)))


@db_app.command("init")
def db_init_command() -> None:
    """Create the applied-transactions ledger table in the main database."""
    settings = BufferingSettings()

    async def init() -> None:
        engine = create_engine(settings.database_url)
        try:
            await TransactionExecutor(engine, ModelRegistry()).create_ledger()
        finally:
            await engine.dispose()

    asyncio.run(init())
    Console().print(f"ledger table {LEDGER_TABLE_NAME} ready in {mask_url(settings.database_url)}")


@app.callback()
def _root() -> None:
    """Buffer a remote site's writes and drain them into the main database."""


def main() -> None:
    """Entry point of the ``ccat-buffering`` command."""
    app()
