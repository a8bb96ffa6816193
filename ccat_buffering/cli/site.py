"""Running a site: ``simulate`` and ``worker``."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import signal
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from ccat_buffering.cli._app import app
from ccat_buffering.cli._common import (
    command,
    configure_logging,
    current,
    database_error,
    emit_json,
    progress,
    registry_for,
    settings_for,
)
from ccat_buffering.config._settings_checks import (
    check_backend_url,
    check_database_url,
    check_driver,
)
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.demo.simulation import SimulationSummary, simulate
from ccat_buffering.drain._heap import settle_heap
from ccat_buffering.drain.processor import ProcessorState
from ccat_buffering.errors import ConfigurationError
from ccat_buffering.logs import SiteLogger
from ccat_buffering.site.coordinator import BufferingCoordinator, largest_batch
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["run_worker"]


def _summary_table(summary: SimulationSummary) -> Table:
    table = Table(title="simulated outage: buffer, restore, drain, confirm")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in summary.model_dump().items():
        table.add_row(name.replace("_", " "), str(value))
    table.add_row("verdict", "[green]ok[/green]" if summary.ok else "[red]FAILED[/red]")
    return table


def _check_urls(backend_url: str, database_url: str | None, replica_url: str | None) -> None:
    try:
        check_backend_url(backend_url)
        check_database_url(database_url)
        check_database_url(replica_url)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    check_driver("--database-url", database_url or "sqlite+aiosqlite://")
    if replica_url:
        check_driver("--replica-url", replica_url)


class SimulatedSchema(enum.StrEnum):
    """The example schemas ``simulate`` runs on."""

    TEXT = "text"
    UUID = "uuid"


@command(app, "simulate", site=False)
def simulate_command(
    observations: Annotated[
        int, typer.Option(help="Observations to record; two transactions each.")
    ] = 1000,
    poison: Annotated[int, typer.Option(help="Transactions built to fail (dead-lettered).")] = 2,
    backend_url: Annotated[str, typer.Option(help="Where to buffer.", metavar="URL")] = "memory://",
    database_url: Annotated[
        str | None,
        typer.Option(help="Main database; a temporary SQLite file by default.", metavar="URL"),
    ] = None,
    replica_url: Annotated[
        str | None,
        typer.Option(help="The site's streaming replica, for LSN tracking.", metavar="URL"),
    ] = None,
    site: Annotated[
        str | None,
        typer.Option(help="The site's name; a new simulated-<id> by default.", metavar="NAME"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random values.")] = 0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the site's keys in Redis afterwards.")
    ] = False,
    schema: Annotated[
        SimulatedSchema,
        typer.Option(help="The example schema: text keys, or native UUID keys."),
    ] = SimulatedSchema.TEXT,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", "--debug", help="Log at INFO; show tracebacks.")
    ] = False,
) -> None:
    """Run a site through an outage: buffer, restore the database, drain, confirm, count.

    It reads no settings: the options below are all it uses. Exits 1 when
    anything was lost or applied twice.
    """
    json_output = current().as_json
    configure_logging(verbose)
    if not verbose:
        # Retries and pauses are the point of the scenario; the summary counts them.
        logging.getLogger("ccat_buffering").setLevel(logging.ERROR)
    _check_urls(backend_url, database_url, replica_url)
    with progress(quiet=json_output) as report:
        try:
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
                    keep=keep,
                    schema=schema.value,
                )
            )
        except (OSError, SQLAlchemyError) as exc:
            raise database_error(exc, database_url or "the temporary SQLite file") from exc
    if json_output:
        emit_json(summary.model_dump())
    else:
        Console().print(_summary_table(summary))
    raise typer.Exit(0 if summary.ok else 1)


def _started(settings: BufferingSettings, site: BufferingCoordinator, holder: str | None) -> str:
    described = site.describe()
    return (
        f"worker {site.processor.holder} starting: site {described['site']} "
        f"({described['site_type']}), backend {described['backend']}, "
        f"database {described['database']}, replica {described['replica'] or '-'}; "
        f"batch {_batch(settings)}, claim lease {settings.claim_lease:g} s, "
        f"processor lease {settings.processor_lease:g} s, "
        f"outage pause {settings.outage_base_delay:g}-{settings.outage_max_delay:g} s, "
        f"{settings.max_attempts} attempt(s) from {settings.retry_base_delay:g} s; "
        f"timeouts: connect {settings.connect_timeout:g} s, statement "
        f"{settings.statement_timeout:g} s, lock {settings.lock_timeout:g} s, idle in "
        f"transaction {settings.idle_in_transaction_timeout:g} s; "
        f"lease held by {holder or 'nobody'}"
    )


def _batch(settings: BufferingSettings) -> str:
    if not settings.batch_size_adaptive:
        return str(settings.batch_size)
    return f"{settings.batch_size} adaptive {settings.batch_size_min}-{settings.batch_size_max}"


async def _follow(site: BufferingCoordinator, log: SiteLogger, stop: asyncio.Event) -> None:
    """Log one INFO line each time the processor's state (or pause cause) changes."""
    processor = site.processor
    seen: tuple[ProcessorState, str | None] | None = None
    while True:
        now = (processor.state, processor.cause)
        if now != seen:
            seen = now
            if now[0] is ProcessorState.PAUSED:
                log.info("paused: %s", now[1] or "-")
            elif now[0] is ProcessorState.STANDBY:
                lease = await site.backend.lease.current()
                log.info("standby: %s holds the lease", "-" if lease is None else lease.holder)
            else:
                log.info("%s", now[0])
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


async def run_worker(
    settings: BufferingSettings, registry: ModelRegistry, metrics_port: int | None = None
) -> None:
    """Run the processor and the replication tracker until SIGTERM or SIGINT.

    It logs one INFO line at start (the site, its masked URLs, the batch size,
    the timeouts and who holds the lease) and one per change of the
    processor's state, whatever the log level of the rest.

    Args:
        settings: The site's settings.
        registry: The mapped classes.
        metrics_port: Serve Prometheus metrics on this port (needs the
            ``metrics`` extra).

    Raises:
        ConfigurationError: The metrics port is in use or not allowed.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logging.getLogger("ccat_buffering.worker").setLevel(logging.INFO)
    log = SiteLogger("ccat_buffering.worker", settings.site_name)
    async with BufferingCoordinator.from_settings(settings, registry=registry, start=False) as site:
        lease = await site.backend.lease.current()
        log.info("%s", _started(settings, site, None if lease is None else lease.holder))
        if metrics_port is not None:
            from ccat_buffering.web.metrics import serve

            try:
                serve(site, metrics_port)
            except OSError as exc:
                why = "in use" if exc.errno == errno.EADDRINUSE else f"refused ({exc.strerror})"
                raise ConfigurationError(
                    f"--metrics-port {metrics_port} is {why}: choose another port"
                ) from exc
        settle_heap(largest_batch(settings))
        site.start()
        following = asyncio.create_task(_follow(site, log, stop))
        await stop.wait()
        log.info("stopping after the current batch")
        await site.stop()
        await following
    log.info("worker stopped")


@command(app, "worker", json_output=False)
def worker_command(
    models: Annotated[
        str | None,
        typer.Option(help="The mapped classes: package.module:Base.", metavar="MODULE:BASE"),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on this port.", min=1, max=65535),
    ] = None,
) -> None:
    """Drain the site's buffer and confirm replication until stopped (SIGTERM, Ctrl-C)."""
    configure_logging(current().verbose)
    settings = settings_for(models)
    asyncio.run(run_worker(settings, registry_for(settings), metrics_port))
