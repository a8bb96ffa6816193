"""The console as an application of its own: what ``ccat-buffering console`` serves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from ccat_buffering.cli._operator import OperatorSite, open_site
from ccat_buffering.console._samples import Samples
from ccat_buffering.console._site import ConsoleSite
from ccat_buffering.console.router import Operator, console_router
from ccat_buffering.database import create_engine
from ccat_buffering.executor import TransactionExecutor
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.settings import BufferingSettings

__all__ = ["console_site", "create_app"]


def console_site(
    settings: BufferingSettings, registry: ModelRegistry | None = None
) -> tuple[ConsoleSite, OperatorSite, TransactionExecutor | None]:
    """The site as the console sees it, opened from settings.

    The main database is opened only when ``database_url`` is set: for the
    buffer-loss check, and, with ``registry``, for dry-run replays.
    """
    operator_site = open_site(settings, replica=True, database=True)
    executor = None
    if registry is not None and settings.database_url:
        executor = TransactionExecutor(
            create_engine(settings.database_url), registry, site=settings.site_name
        )
    site = ConsoleSite(
        settings=settings,
        backend=operator_site.backend,
        manager=operator_site.manager,
        health=operator_site.health,
        executor=executor,
        buffer_losses=operator_site.buffer_losses,
    )
    return site, operator_site, executor


def create_app(
    settings: BufferingSettings,
    registry: ModelRegistry | None = None,
    *,
    operator: Operator | None = None,
    sample_every: float = 10.0,
) -> FastAPI:
    """A FastAPI application serving the console at ``/console`` (``/`` redirects there).

    Args:
        settings: The site's settings (``console_credential`` lets operators act).
        registry: The mapped classes, for dry-run replays at the main database.
        operator: Who may act, instead of the credential.
        sample_every: Seconds between the charts' samples.

    Returns:
        The application; it closes the site's stores when it shuts down.
    """
    site, operator_site, executor = console_site(settings, registry)
    samples = Samples(interval=sample_every)

    async def sample_forever() -> None:
        while True:
            with contextlib.suppress(Exception):  # a store that is down: the page says so
                samples.add(await site.health())
            await asyncio.sleep(sample_every)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(sample_forever(), name="console-samples")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await operator_site.__aexit__(None, None, None)
            if executor is not None:
                await executor.engine.dispose()

    app = FastAPI(title="ccat-buffering console", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(console_router(site, operator=operator, samples=samples))

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console")

    return app
