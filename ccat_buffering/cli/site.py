"""Running a site: ``simulate``, ``worker`` and ``db init``."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ccat_buffering.cli._app import app, db_app
from ccat_buffering.cli._common import configure_logging, progress, registry_for, settings_with
from ccat_buffering.coordinator import BufferingCoordinator
from ccat_buffering.executor import LEDGER_TABLE_NAME, TransactionExecutor, create_engine
from ccat_buffering.logs import SiteLogger
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.settings import BufferingSettings, mask_url
from ccat_buffering.simulation import SimulationSummary, simulate

__all__ = ["run_worker"]


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
    site: Annotated[
        str | None, typer.Option(help="The site's name; a new simulated-<id> by default.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random values.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
) -> None:
    """Run a site through an outage: buffer, restore the database, drain, confirm, count."""
    configure_logging(verbose)
    if not verbose:
        # Retries and pauses are the point of the scenario; the summary counts them.
        logging.getLogger("ccat_buffering").setLevel(logging.ERROR)
    with progress(quiet=as_json) as report:
        summary = asyncio.run(
            simulate(
                observations,
                poison=poison,
                backend_url=backend_url,
                database_url=database_url,
                replica_url=replica_url,
                site=site,
                seed=seed,
                progress=report,
            )
        )
    if as_json:
        print(json.dumps(summary.model_dump()))
    else:
        Console().print(_summary_table(summary))
    raise typer.Exit(0 if summary.ok else 1)


async def run_worker(
    settings: BufferingSettings, registry: ModelRegistry, metrics_port: int | None = None
) -> None:
    """Run the processor and the replication tracker until SIGTERM or SIGINT.

    Args:
        settings: The site's settings.
        registry: The mapped classes.
        metrics_port: Serve Prometheus metrics on this port (needs the
            ``metrics`` extra).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log = SiteLogger("ccat_buffering.worker", settings.site_name)
    async with BufferingCoordinator.from_settings(settings, registry=registry, start=False) as site:
        if metrics_port is not None:
            from ccat_buffering.metrics import serve

            serve(site, metrics_port)
        site.start()
        log.info("worker %s started (%s)", site.processor.holder, site.describe())
        await stop.wait()
        log.info("stopping after the current batch")
    log.info("worker stopped")


@app.command("worker")
def worker_command(
    models: Annotated[
        str | None, typer.Option(help="The mapped classes: package.module:Base.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
) -> None:
    """Drain the site's buffer and confirm replication until stopped (SIGTERM, Ctrl-C)."""
    configure_logging(verbose)
    settings = settings_with(models)
    asyncio.run(run_worker(settings, registry_for(settings), metrics_port))


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
