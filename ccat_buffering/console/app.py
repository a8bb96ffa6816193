"""The console as an application of its own: what ``ccat-buffering console`` serves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.cli._operator import OperatorSite, open_site
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.console._samples import Samples as ChartSamples
from ccat_buffering.console._site import ConsoleSite
from ccat_buffering.console._sites import SiteEntry, sites_router
from ccat_buffering.console.router import Operator, console_router
from ccat_buffering.drain._stopping import finish_or_cancel, raise_if_cancelling
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["console_site", "create_app"]


def console_site(
    settings: BufferingSettings,
    registry: ModelRegistry | None = None,
    engine: AsyncEngine | None = None,
) -> tuple[ConsoleSite, OperatorSite]:
    """The site as the console sees it, opened from settings.

    ``engine`` is the main database (shared by every site of the console):
    the conflict log is read there, and with ``registry`` dry-run replays and
    resolutions run there. The site's own buffer-loss check opens its own.
    """
    operator_site = open_site(settings, replica=True, database=True)
    executor = None
    if registry is not None and engine is not None:
        executor = TransactionExecutor(engine, registry, site=settings.site_name)
    site = ConsoleSite(
        settings=settings,
        backend=operator_site.backend,
        manager=operator_site.manager,
        health=operator_site.health,
        executor=executor,
        buffer_losses=operator_site.buffer_losses,
        engine=engine,
        registry=registry,
    )
    return site, operator_site


def create_app(
    settings: BufferingSettings,
    registry: ModelRegistry | None = None,
    *,
    operator: Operator | None = None,
    sample_every: float = 10.0,
    sites: Sequence[str] = (),
) -> FastAPI:
    """A FastAPI application serving the console at ``/console`` (``/`` redirects there).

    Args:
        settings: The site's settings (``console_credential`` lets operators act).
        registry: The mapped classes, for dry-run replays and resolutions.
        operator: Who may act, instead of the credential.
        sample_every: Seconds between the charts' samples.
        sites: More sites on the same backend (a Redis Cluster's other
            sites): each is served at ``/console/sites/<name>``, and
            ``/console/sites`` shows every site at a glance.

    Returns:
        The application; it closes the sites' stores when it shuts down.
    """
    engine = create_engine(settings.database_url) if settings.database_url else None
    names = [settings.site_name, *(n for n in dict.fromkeys(sites) if n != settings.site_name)]
    opened = [
        console_site(settings.model_copy(update={"site_name": name}), registry, engine)
        for name in names
    ]
    peers = {site.backend.site: site for site, _ in opened}
    entries = []
    for i, (site, _) in enumerate(opened):
        site.peers = peers
        prefix = "/console" if i == 0 else f"/console/sites/{site.backend.site}"
        entries.append(SiteEntry(site, prefix))
    rings = [ChartSamples(entry.site.backend, interval=sample_every) for entry in entries]

    async def sample_forever() -> None:
        while True:
            for entry, ring in zip(entries, rings, strict=True):
                with contextlib.suppress(Exception):  # a store that is down: the page says so
                    await ring.add(await entry.site.health())
                raise_if_cancelling()  # a driver may have turned the cancellation into an error
            await asyncio.sleep(sample_every)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(sample_forever(), name="console-samples")
        try:
            yield
        finally:
            await finish_or_cancel(task)  # cancels again if a Redis call ate one
            for _, operator_site in opened:
                await operator_site.__aexit__(None, None, None)
            if engine is not None:
                await engine.dispose()

    app = FastAPI(title="ccat-buffering console", lifespan=lifespan, docs_url=None, redoc_url=None)
    sites_url = "/console/sites" if len(entries) > 1 else None
    for entry, ring in zip(entries, rings, strict=True):
        app.include_router(
            console_router(
                entry.site,
                prefix=entry.prefix,
                operator=operator,
                samples=ring,
                sites_url=sites_url,
            )
        )
    if sites_url is not None:
        app.include_router(sites_router(entries))

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console")

    return app
