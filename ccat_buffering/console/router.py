"""The console's routes: pages, htmx fragments and actions, under one mountable router."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from ccat_buffering.console import _actions, _conflicts, _data
from ccat_buffering.console._conflict_routes import add_conflict_routes
from ccat_buffering.console._samples import Samples, sparkline
from ccat_buffering.console._site import ConsoleSite
from ccat_buffering.errors import BufferingError
from ccat_buffering.masking import mask_text
from ccat_buffering.models import TransactionState

__all__ = ["Operator", "console_router", "credential_operator", "environment"]

Operator = Callable[[Request], Awaitable[str | None]]
"""Who may act: returns the caller's audit principal, or ``None`` (read-only)."""

_STATIC = Path(__file__).parent / "static"


def credential_operator(credential: str) -> Operator:
    """An operator recognised by HTTP Basic auth whose password is ``credential``.

    The principal is ``console:<user name>``.
    """

    async def who(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            user, _, given = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if secrets.compare_digest(given.encode(), credential.encode()):
            return f"console:{user or 'operator'}"
        return None

    return who


async def _nobody(_request: Request) -> str | None:
    return None


def environment() -> Environment:
    """The templates, with the console's filters."""
    env = Environment(
        loader=PackageLoader("ccat_buffering.console", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["seconds"] = _seconds
    env.filters["iso"] = _iso
    env.filters["mask"] = mask_text
    env.globals["sparkline"] = sparkline
    return env


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def _iso(value: dt.datetime | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def console_router(
    site: ConsoleSite,
    *,
    prefix: str = "/console",
    operator: Operator | None = None,
    samples: Samples | None = None,
    sites_url: str | None = None,
) -> APIRouter:
    """The console's routes, for ``app.include_router``.

    Args:
        site: What it looks at (:meth:`ConsoleSite.of` a coordinator).
        prefix: Where it lives.
        operator: Who may act (the host application's auth, or
            :func:`credential_operator`); ``None``: the site's
            ``console_credential`` if set, else nobody (read-only).
        samples: The charts' ring (one is made when ``None``).
        sites_url: Where the all-sites page is, for the navigation (``None``: none).

    Returns:
        The router.
    """
    env = environment()
    ring = samples or Samples(site.backend)
    credential = site.settings.console_credential
    if operator is None and credential is not None:
        operator = credential_operator(credential.get_secret_value())
    who = operator or _nobody
    router = APIRouter(prefix=prefix, include_in_schema=False)

    async def render(request: Request, name: str, code: int = 200, **values: Any) -> HTMLResponse:
        principal = await who(request)
        page = env.get_template(name).render(
            base=prefix,
            site=site.backend.site,
            principal=principal,
            can_sign_in=operator is not None,
            sites_url=sites_url,
            states=[state.value for state in TransactionState],
            **values,
        )
        return HTMLResponse(page, status_code=code)

    async def form(request: Request) -> dict[str, list[str]]:
        return parse_qs((await request.body()).decode(), keep_blank_values=True)

    async def acting(request: Request) -> str | Response:
        """The principal of an allowed action, or the refusal to send."""
        if request.headers.get("hx-request") != "true":
            # Only the console's own requests carry it (a cross-site form cannot).
            return HTMLResponse("actions come from the console's own page", status_code=400)
        principal = await who(request)
        if principal is None:
            return await render(
                request,
                "_message.html",
                403,
                kind="refused",
                text=("read-only: sign in with the operator credential to act"),
            )
        return principal

    @router.get("/static/htmx.min.js")
    async def htmx() -> FileResponse:
        return FileResponse(_STATIC / "htmx.min.js", media_type="text/javascript")

    @router.get("/login")
    async def login(request: Request) -> Response:
        if operator is None or await who(request) is None:
            return Response(
                "sign in with the operator credential",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="ccat-buffering console"'},
            )
        return Response(status_code=303, headers={"Location": prefix or "/"})

    @router.get("", response_class=HTMLResponse)
    @router.get("/", response_class=HTMLResponse)
    async def overview(request: Request) -> HTMLResponse:
        data = await _data.overview(site, ring)
        conflicts = await _conflicts.unresolved_count(site)
        return await render(request, "overview.html", page="overview", conflicts=conflicts, **data)

    @router.get("/fragments/overview", response_class=HTMLResponse)
    async def overview_fragment(request: Request) -> HTMLResponse:
        data = await _data.overview(site, ring)
        conflicts = await _conflicts.unresolved_count(site)
        return await render(request, "_overview.html", conflicts=conflicts, **data)

    @router.get("/transactions", response_class=HTMLResponse)
    async def transactions(
        request: Request,
        state: str = "buffered",
        endpoint: str = "",
        q: str = "",
        since: str = "",
        page: int = 0,
        after: str = "",
    ) -> HTMLResponse:
        try:
            chosen = TransactionState(state)
            moment = dt.datetime.fromisoformat(since) if since else None
        except ValueError as exc:
            return await render(request, "_message.html", 400, kind="refused", text=str(exc))
        if moment is not None and moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        wanted = _data.TransactionFilter(chosen, endpoint, q, moment, max(page, 0), after)
        try:
            found = await _data.transactions_page(site, wanted)
        except ValueError as exc:  # a cursor the store did not give
            return await render(request, "_message.html", 400, kind="refused", text=str(exc))
        query = {"state": state, "endpoint": endpoint, "q": q, "since": since}
        following = {"after": found.cursor} if found.cursor else {}
        return await render(
            request,
            "transactions.html",
            page="transactions",
            found=found,
            wanted=wanted,
            query=query,
            next_query=urlencode({**query, "page": wanted.page + 1, **following}),
            previous_query=urlencode({**query, "page": max(wanted.page - 1, 0)}),
            first_query=urlencode(query),
        )

    @router.get("/transactions/{transaction_id}", response_class=HTMLResponse)
    async def transaction(request: Request, transaction_id: str) -> HTMLResponse:
        found = await _data.transaction_detail(site, transaction_id)
        if found is None:
            return await render(
                request,
                "_message.html",
                404,
                kind="refused",
                text=f"no transaction {transaction_id} at site {site.backend.site}",
            )
        return await render(request, "transaction.html", page="transactions", **found)

    @router.get("/letters", response_class=HTMLResponse)
    async def letters(
        request: Request, q: str = "", page: int = 0, after: str = ""
    ) -> HTMLResponse:
        wanted = _data.LetterFilter(q, max(page, 0), after)
        try:
            found = await _data.letters_page(site, wanted)
        except ValueError as exc:  # a cursor the store did not give
            return await render(request, "_message.html", 400, kind="refused", text=str(exc))
        following = {"after": found.cursor} if found.cursor else {}
        return await render(
            request,
            "letters.html",
            page="letters",
            found=found,
            q=q,
            wanted=wanted,
            conflicts=await _conflicts.unresolved_count(site),
            next_query=urlencode({"q": q, "page": wanted.page + 1, **following}),
            previous_query=urlencode({"q": q, "page": max(wanted.page - 1, 0)}),
            first_query=urlencode({"q": q}),
            dry_run_possible=site.executor is not None,
        )

    async def selection(request: Request) -> tuple[_actions.Plan, dict[str, list[str]], str]:
        fields = await form(request)
        ids = [i for i in fields.get("ids", []) if i]
        text = (fields.get("q") or [""])[0]
        chosen = await _actions.plan(site, ids, None if ids else _data.LetterFilter(text))
        label = f"{len(ids)} named" if ids else f"all matching {text!r}" if text else "all"
        return chosen, fields, label

    @router.post("/letters/plan", response_class=HTMLResponse)
    async def plan(request: Request) -> Response:
        principal = await acting(request)
        if not isinstance(principal, str):
            return principal
        chosen, fields, label = await selection(request)
        return await render(
            request,
            "_plan.html",
            chosen=chosen,
            label=label,
            action=(fields.get("action") or ["replay"])[0],
            ids=fields.get("ids", []),
            q=(fields.get("q") or [""])[0],
            dry_run_possible=site.executor is not None,
        )

    @router.post("/letters/{action}", response_class=HTMLResponse)
    async def act(request: Request, action: str) -> Response:
        principal = await acting(request)
        if not isinstance(principal, str):
            return principal
        chosen, fields, label = await selection(request)
        confirmed = int(fields["confirm"][0]) if fields.get("confirm") else None
        try:
            if action == "replay":
                done = await _actions.replay(site, chosen, confirmed, principal, label)
                text = f"replayed {len(done)} transaction(s) to the head of the buffer"
            elif action == "purge":
                purged = await _actions.purge(site, chosen, confirmed, principal, label)
                text = f"purged {purged} dead letter(s)"
            elif action == "dry-run":
                reports = await _actions.dry_run(site, chosen, principal)
                return await render(request, "_dry_run.html", reports=reports)
            else:
                return await render(
                    request, "_message.html", 404, kind="refused", text=f"no action {action}"
                )
        except (_actions.StaleCount, LookupError, BufferingError) as exc:
            return await render(
                request, "_message.html", 409, kind="refused", text=mask_text(str(exc))
            )
        return await render(request, "_message.html", kind="done", text=text)

    @router.post("/pause", response_class=HTMLResponse)
    async def pause(request: Request) -> Response:
        principal = await acting(request)
        if not isinstance(principal, str):
            return principal
        reason = ((await form(request)).get("reason") or [""])[0]
        held = await _actions.pause(site, reason, principal)
        return await render(request, "_message.html", kind="done", text=held.cause)

    @router.post("/resume", response_class=HTMLResponse)
    async def resume(request: Request) -> Response:
        principal = await acting(request)
        if not isinstance(principal, str):
            return principal
        was = await _actions.resume(site, principal)
        text = "the drain was not paused" if was is None else f"resumed; it was {was.cause}"
        return await render(request, "_message.html", kind="done", text=text)

    add_conflict_routes(router, site, render, acting, form)

    @router.get("/audit", response_class=HTMLResponse)
    async def audit_log(request: Request) -> HTMLResponse:
        entries = await _data.audit_entries(site)
        return await render(request, "audit.html", page="audit", entries=entries)

    return router
