"""The console's conflict pages and the resolve action (keep mine / keep theirs)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from ccat_buffering.conflicts.kinds import ConflictKind
from ccat_buffering.console import _conflicts
from ccat_buffering.console._actions import StaleCount
from ccat_buffering.console._site import ConsoleSite
from ccat_buffering.masking import mask_text

__all__ = ["add_conflict_routes"]

Render = Callable[..., Awaitable[HTMLResponse]]


def _first(fields: dict[str, list[str]], name: str) -> str:
    return (fields.get(name) or [""])[0]


def add_conflict_routes(
    router: APIRouter,
    site: ConsoleSite,
    render: Render,
    acting: Callable[[Request], Awaitable[str | Response]],
    form: Callable[[Request], Awaitable[dict[str, list[str]]]],
) -> None:
    """Add ``/conflicts``, ``/conflicts/{id}``, ``/conflicts/plan`` and ``/conflicts/resolve``."""

    async def unreadable(request: Request, exc: Exception) -> HTMLResponse:
        return await render(request, "_message.html", 503, kind="refused", text=mask_text(str(exc)))

    @router.get("/conflicts", response_class=HTMLResponse)
    async def conflicts(
        request: Request,
        model: str = "",
        kind: str = "",
        of_site: str | None = None,
        before: int | None = None,
    ) -> HTMLResponse:
        # This site's conflicts unless another site (or every one: empty) is asked for.
        wanted = _conflicts.ConflictFilter(
            model, kind, site.backend.site if of_site is None else of_site
        )
        try:
            found, following = await _conflicts.open_conflicts(site, wanted, before)
            matching = await _conflicts.count_open(site, wanted)
        except _conflicts.LogUnreadable as exc:
            return await unreadable(request, exc)
        query = {"model": model, "kind": kind, "of_site": wanted.site}
        return await render(
            request,
            "conflicts.html",
            page="conflicts",
            found=found,
            matching=matching,
            first_query=urlencode(query) if before is not None else None,
            next_query=None if following is None else urlencode({**query, "before": following}),
            wanted=wanted,
            kinds=[str(k) for k in ConflictKind],
            can_resolve=site.registry is not None,
        )

    @router.get("/conflicts/{conflict_id}", response_class=HTMLResponse)
    async def conflict(request: Request, conflict_id: int) -> HTMLResponse:
        try:
            found = await _conflicts.one(site, conflict_id)
        except _conflicts.LogUnreadable as exc:
            return await unreadable(request, exc)
        if found is None:
            text = f"there is no conflict {conflict_id}: see the conflicts page"
            return await render(request, "_message.html", 404, kind="refused", text=text)
        return await render(
            request,
            "conflict.html",
            page="conflicts",
            found=found,
            fields=_conflicts.diff(found),
            can_resolve=site.registry is not None,
        )

    async def selection(
        request: Request,
    ) -> tuple[_conflicts.ConflictPlan, dict[str, list[str]], str]:
        fields = await form(request)
        ids = [int(i) for i in fields.get("ids", []) if i.strip().isdigit()]
        wanted = _conflicts.ConflictFilter(
            _first(fields, "model"), _first(fields, "kind"), _first(fields, "of_site")
        )
        chosen = await _conflicts.plan(site, ids, wanted)
        label = f"{len(ids)} named" if ids else wanted.label()
        return chosen, fields, label

    def keep_of(fields: dict[str, list[str]]) -> str:
        keep = _first(fields, "keep")
        if keep not in ("mine", "theirs"):
            raise ValueError(f"keep must be mine or theirs, not {keep!r}")
        return keep

    @router.post("/conflicts/plan", response_class=HTMLResponse)
    async def plan(request: Request) -> Response:
        principal = await acting(request)
        if not isinstance(principal, str):
            return principal
        try:
            chosen, fields, label = await selection(request)
            keep = keep_of(fields)
        except _conflicts.LogUnreadable as exc:
            return await unreadable(request, exc)
        except ValueError as exc:
            return await render(request, "_message.html", 400, kind="refused", text=str(exc))
        values: dict[str, Any] = {
            "confirm": str(len(chosen.chosen)),
            "keep": keep,
            "ids": fields.get("ids", []),
            **{name: _first(fields, name) for name in ("model", "kind", "of_site")},
        }
        return await render(
            request, "_conflict_plan.html", chosen=chosen, label=label, keep=keep, values=values
        )

    @router.post("/conflicts/resolve", response_class=HTMLResponse)
    async def resolve(request: Request) -> Response:
        principal = await acting(request)
        if not isinstance(principal, str):
            return principal
        try:
            chosen, fields, label = await selection(request)
            keep = keep_of(fields)
            confirmed = int(fields["confirm"][0]) if fields.get("confirm") else None
            done = await _conflicts.resolve(
                site,
                chosen,
                "mine" if keep == "mine" else "theirs",
                confirmed,
                principal,
                label,
            )
        except _conflicts.LogUnreadable as exc:
            return await unreadable(request, exc)
        except ValueError as exc:
            return await render(request, "_message.html", 400, kind="refused", text=str(exc))
        except (StaleCount, LookupError) as exc:
            return await render(
                request, "_message.html", 409, kind="refused", text=mask_text(str(exc))
            )
        text = f"resolved {len(done.done)} conflict(s), kept {keep}"
        if done.released:
            text += "; released " + ", ".join(f"{tx} ({fate})" for tx, fate in done.released)
        if done.unfollowed:
            text += (
                "; the statuses of site(s) " + ", ".join(sorted(done.unfollowed)) + " were not "
                "set: this console does not serve them (as `conflicts resolve` for another site)"
            )
        if done.refused:
            text += "; refused " + "; ".join(done.refused)
        kind = "done" if done.done or not done.refused else "refused"
        return await render(request, "_message.html", kind=kind, text=mask_text(text))
