"""The main database's side of buffering: ``db init``, ``db prune``."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from ccat_buffering.cli._app import db_app
from ccat_buffering.cli._common import command, current, database_error, emit_json, settings_for
from ccat_buffering.config.backends import open_backend
from ccat_buffering.drain.database import LEDGER_TABLE_NAME, create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.ledger_pruning import PruneReport, prune_site
from ccat_buffering.masking import mask_url
from ccat_buffering.site.coordinator import link_timeouts
from ccat_buffering.write.registry import ModelRegistry

__all__: list[str] = []


@command(db_app, "init")
def db_init_command() -> None:
    """Create the applied-transactions ledger table in the main database, or upgrade it."""
    settings = settings_for(site=False)
    url = settings.require_url("database_url")

    async def init() -> None:
        engine = create_engine(
            url, timeouts=link_timeouts(settings), **settings.database_engine_options
        )
        try:
            await TransactionExecutor(engine, ModelRegistry()).create_ledger()
        except (OSError, SQLAlchemyError) as exc:
            raise database_error(exc, url) from exc
        finally:
            await engine.dispose()

    asyncio.run(init())
    if current().as_json:
        emit_json({"ledger_table": LEDGER_TABLE_NAME, "database": mask_url(url)})
    else:
        Console().print(f"ledger table {LEDGER_TABLE_NAME} ready in {mask_url(url)}")


@command(db_app, "prune")
def db_prune_command(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count the rows that would go; delete nothing.")
    ] = False,
) -> None:
    """Delete the site's ledger rows that no redelivery can need (see docs: operations).

    The horizon is the older of ``now - ledger_retention`` and the creation
    of the oldest transaction the site's buffer still holds; rows go in
    batches of ``ledger_prune_batch``.
    """
    settings = settings_for()
    url = settings.require_url("database_url")

    async def prune() -> PruneReport:
        engine = create_engine(url)
        backend = open_backend(
            settings.backend_url, site=settings.site_name, **settings.backend_options()
        )
        try:
            return await prune_site(
                engine,
                backend,
                retention=settings.ledger_retention,
                batch_size=settings.ledger_prune_batch,
                dry_run=dry_run,
            )
        except (OSError, SQLAlchemyError) as exc:
            raise database_error(exc, url) from exc
        finally:
            await backend.aclose()
            await engine.dispose()

    report = asyncio.run(prune())
    if current().as_json:
        emit_json(report.as_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    held = report.held_since.isoformat() if report.held_since else "nothing"
    Console().print(
        f"site {report.site}: {verb} {report.rows} ledger row(s) of transactions created "
        f"before {report.horizon.isoformat()} (the site holds {held}); "
        f"{report.remaining} row(s) of the site remain",
        soft_wrap=True,
    )
