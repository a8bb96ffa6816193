"""The operator's web console: a mountable FastAPI router, server-rendered with Jinja2 and htmx.

It shows the same data as the ``ccat-buffering`` commands (the site at a
glance, transactions by state with filters, a transaction's history and
payload, dead letters with their reasons, conflicts with base / mine /
theirs, the audit log) and runs the same actions (replay, dry-run replay,
purge, resolve a conflict, pause, resume) on one item or on everything a
filter matches, each after a count of what it would touch. Several sites of
one backend are served side by side, with a page of every site at a glance
(:func:`sites_router`).
Read-only unless an operator is recognised: by the site's
``console_credential`` (HTTP Basic auth) or by the host application's own
dependency. Every action is written to the audit log (:mod:`ccat_buffering.audit`).

No JavaScript build step: the templates and a vendored ``htmx.min.js``
(htmx 2.0.4, from the ``htmx.org`` npm package, BSD Zero-Clause licence) ship
as package data. Needs the ``console`` extra.

It may import the core, FastAPI, Starlette and Jinja2; never a backend.
"""

from __future__ import annotations

from ccat_buffering.console._site import ConsoleSite
from ccat_buffering.console._sites import SiteEntry, sites_router
from ccat_buffering.console.router import console_router

__all__ = ["ConsoleSite", "SiteEntry", "console_router", "sites_router"]
