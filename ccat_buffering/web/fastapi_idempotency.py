"""The ``Idempotency-Key`` header on :func:`~ccat_buffering.web.fastapi.critical_operation` routes.

A request that carries the header becomes at most one transaction: a retry
with the same key (same method, path, query and body) is answered with the
first answer, status code and body, and the transaction's state now, with
``Idempotent-Replayed: true``, and the handler does not run again. The same
key with another request answers 422 (nothing written). Concurrent requests
with one key buffer once: the key is claimed atomically before the buffer
is written (see :mod:`ccat_buffering.buffer.idempotency`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from ccat_buffering.buffer.idempotency import KeyRecord, fingerprint, lookup
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction

__all__ = ["REPLAYED_HEADER", "idempotent"]

REPLAYED_HEADER = "Idempotent-Replayed"
"""Set to ``true`` on an answer repeated for a known key."""


def _replay(record: KeyRecord, state: str) -> JSONResponse:
    return JSONResponse(
        record.response,
        status_code=record.status_code or 200,
        headers={
            "X-Transaction-Id": record.transaction_id,
            "X-Transaction-State": state,
            REPLAYED_HEADER: "true",
        },
    )


async def idempotent(
    site: BufferingCoordinator,
    request: Request,
    response: Response,
    key: str,
    builder: TransactionBuilder,
    run: Callable[[], Awaitable[Any]],
) -> Any:
    """Run a critical operation's handler once per idempotency key.

    Args:
        site: The coordinator.
        request: The request (its method, path, query and body are its fingerprint).
        response: The response FastAPI will send (headers are set on it).
        key: The ``Idempotency-Key`` header.
        builder: The request's builder (the handler fills it).
        run: Runs the handler.

    Returns:
        The handler's result, or the first answer again.
    """
    request_print = fingerprint(
        request.method, request.url.path, request.url.query, await request.body()
    )
    first = await lookup(site.backend.status, key, request_print)
    if first is not None:
        # Known: settle on the first transaction (it may still be on its way
        # into the buffer) and answer as the first time, without the handler.
        outcome = await site.submit_once(
            Transaction.from_json(first.transaction), key, request=request_print
        )
        return _replay(outcome.record, str(outcome.status.state))
    result = await run()
    if not builder.steps:
        return result
    route = request.scope.get("route")
    outcome = await site.submit_once(
        builder.build(),
        key,
        request=request_print,
        response=None if isinstance(result, Response) else jsonable_encoder(result),
        status_code=getattr(route, "status_code", None) or 200,
    )
    if outcome.replayed:  # a concurrent request with the key buffered first
        return _replay(outcome.record, str(outcome.status.state))
    target = result if isinstance(result, Response) else response
    target.headers["X-Transaction-Id"] = outcome.status.transaction_id
    target.headers["X-Transaction-State"] = str(outcome.status.state)
    return result
