"""The main database's side of buffering: ``db init``."""

from __future__ import annotations

import asyncio

from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from ccat_buffering.cli._app import db_app
from ccat_buffering.cli._common import command, current, database_error, emit_json, settings_for
from ccat_buffering.coordinator import link_timeouts
from ccat_buffering.database import LEDGER_TABLE_NAME, create_engine
from ccat_buffering.executor import TransactionExecutor
from ccat_buffering.masking import mask_url
from ccat_buffering.registry import ModelRegistry

__all__: list[str] = []


@command(db_app, "init")
def db_init_command() -> None:
    """Create the applied-transactions ledger table in the main database."""
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
