"""Every site of a shared backend at a glance: one row per site, with a link into its pages.

The console serves each site named to it (``ccat-buffering console --sites``)
under its own prefix; this page reads each one's health, as its overview
does, and its open conflicts. A site whose stores do not answer shows the
error in its row instead of failing the page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment

from ccat_buffering.console import _conflicts
from ccat_buffering.console._site import ConsoleSite
from ccat_buffering.console.router import environment
from ccat_buffering.masking import mask_text

__all__ = ["SiteEntry", "sites_router"]

WAIT = 5.0
"""Seconds one site's numbers may take before its row says it did not answer."""


@dataclass(frozen=True)
class SiteEntry:
    """A site the console serves, and where its pages are."""

    site: ConsoleSite
    prefix: str


async def _row(entry: SiteEntry) -> dict[str, Any]:
    row: dict[str, Any] = {"name": entry.site.backend.site, "link": entry.prefix, "error": None}
    try:
        async with asyncio.timeout(WAIT):
            row["health"] = await entry.site.health()
            row["conflicts"] = await _conflicts.unresolved_count(entry.site)
    except Exception as exc:  # one site down must not hide the others
        row["error"] = mask_text(f"{type(exc).__name__}: {exc}")
    return row


def sites_router(
    entries: Sequence[SiteEntry], env: Environment | None = None, *, prefix: str = "/console"
) -> APIRouter:
    """The all-sites page at ``<prefix>/sites``.

    Args:
        entries: Each site and the prefix its :func:`console_router` was given
            (pass ``sites_url=f"{prefix}/sites"`` to those routers for the link).
        env: The templates (``None``: the console's own).
        prefix: Where the page lives.

    Returns:
        The router.
    """
    env = env or environment()
    router = APIRouter(prefix=prefix, include_in_schema=False)

    @router.get("/sites", response_class=HTMLResponse)
    async def sites(_request: Request) -> HTMLResponse:
        rows = await asyncio.gather(*(_row(entry) for entry in entries))
        page = env.get_template("sites.html").render(
            base=prefix,
            site="every site",
            page="sites",
            sites_url=f"{prefix}/sites",
            rows=rows,
            principal=None,
            can_sign_in=False,
            hide_who=True,
        )
        return HTMLResponse(page)

    return router
