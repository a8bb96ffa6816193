"""HTTP waits for a transaction: a long poll and a stream of server-sent events.

Needs the ``fastapi`` extra. The long poll is the transaction route of
:func:`ccat_buffering.web.fastapi.health_router` with ``?wait=``; the stream is
:func:`waits_router`'s::

    GET /buffering/transactions/{id}?wait=replicated&timeout=30
    GET /buffering/transactions/{id}/events?timeout=300

Both are served by the site's shared poller (:mod:`ccat_buffering.confirm.waiting`),
so a thousand open waits cost the buffer what one does, per poll.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event

from ccat_buffering.confirm.waiting import Until
from ccat_buffering.errors import TransactionFailedError, UnknownTransactionError, WaitTimeoutError
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.web.fastapi import Site
from ccat_buffering.web.public_views import public_status
from ccat_buffering.write.status import TransactionStatus

__all__ = ["MAX_WAIT_SECONDS", "long_poll", "waits_router"]

MAX_WAIT_SECONDS = 300.0
"""The longest wait a request may ask for (``timeout``)."""


def _unknown(transaction_id: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"no transaction {transaction_id!r} (unknown, or its status expired)"},
        status_code=404,
    )


async def long_poll(
    site: BufferingCoordinator,
    transaction_id: str,
    until: Until,
    timeout: float,
    *,
    full: bool = False,
) -> JSONResponse:
    """Answer a transaction's status once it is at ``until``, or when ``timeout`` passes.

    * 200: the status, at ``until`` or past it;
    * 202: not yet (the timeout passed); the body is the last status known;
    * 409: dead-lettered or held as a conflict, it will not get there unless
      replayed or resolved; the body is its status;
    * 404: unknown, or its status expired.

    Args:
        site: The coordinator.
        transaction_id: The transaction.
        until: ``committed`` or ``replicated``.
        timeout: Seconds to wait at most.
        full: Show the whole status (behind the service's auth dependency);
            otherwise its public view (:func:`~ccat_buffering.web.public_views.public_status`:
            the error as its kind, no row data).

    Returns:
        The response.
    """
    try:
        status = await site.wait(transaction_id, until=until, timeout=timeout)
    except UnknownTransactionError:
        return _unknown(transaction_id)
    except WaitTimeoutError as exc:
        body = None if exc.status is None else _shown(exc.status, full)
        return JSONResponse(body, status_code=202, headers={"Retry-After": "0"})
    except TransactionFailedError as exc:
        assert exc.status is not None
        return JSONResponse(_shown(exc.status, full), status_code=409)
    return JSONResponse(_shown(status, full))


def _shown(status: TransactionStatus, full: bool) -> dict[str, Any]:
    return status.model_dump(mode="json") if full else public_status(status)


Timeout = Annotated[float, Query(gt=0, le=MAX_WAIT_SECONDS)]


def waits_router(
    prefix: str = "/buffering", *, auth: Callable[..., Any] | None = None
) -> APIRouter:
    """A route streaming a transaction's changes of state as server-sent events.

    ``GET {prefix}/transactions/{transaction_id}/events?timeout=300`` sends
    one ``status`` event (its data the status as JSON, its id the state) now
    and one per change, and ends after a terminal state (``replicated``,
    ``failed``) or the timeout; 404 when the transaction is unknown.

    Args:
        prefix: Where the route lives.
        auth: The service's own auth dependency, as for
            :func:`~ccat_buffering.web.fastapi.health_router`: with it the events
            carry whole statuses, without it their public views.

    Returns:
        The router, for ``app.include_router``.
    """
    full = auth is not None
    router = APIRouter(
        prefix=prefix, tags=["buffering"], dependencies=[Depends(auth)] if full else []
    )

    @router.get("/transactions/{transaction_id}/events", response_model=None)
    async def events(
        transaction_id: str, site: Site, timeout: Timeout = MAX_WAIT_SECONDS
    ) -> EventSourceResponse | JSONResponse:
        changes = site.statuses.follow(transaction_id, timeout=timeout)
        try:
            first = await anext(changes)
        except UnknownTransactionError:
            return _unknown(transaction_id)

        async def stream() -> AsyncIterator[bytes]:
            site.activity.waiting += 1
            try:
                async with contextlib.aclosing(changes):
                    yield _event(first, full)
                    async for status in changes:
                        yield _event(status, full)
            finally:
                site.activity.waiting -= 1
                site.activity.waits["stream"] += 1

        return EventSourceResponse(stream())

    return router


def _event(status: TransactionStatus, full: bool) -> bytes:
    data = json.dumps(_shown(status, full))
    return format_sse_event(data_str=data, event="status", id=str(status.state))
