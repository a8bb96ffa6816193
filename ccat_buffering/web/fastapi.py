"""FastAPI services on a buffering site: lifespan, dependency, decorator, errors, health.

Install the extra (``pip install ccat-buffering[fastapi]``); FastAPI is
imported here and nowhere else. A service holds its own routes and these
lines of wiring::

    from fastapi import FastAPI
    from ccat_buffering.web.fastapi import health_router, install_error_handlers, lifespan

    app = FastAPI(lifespan=lifespan(registry=ModelRegistry.from_base(Base)))
    install_error_handlers(app)
    app.include_router(health_router())

Routes take the coordinator as a :data:`Site` parameter, and write through
:func:`critical_operation`: the handler fills a fresh
:class:`~ccat_buffering.TransactionBuilder` and the decorator submits it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.errors import (
    BackendError,
    BufferingError,
    ConflictError,
    DatabaseUnavailableError,
    TransactionValidationError,
)
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.web.public_views import public_error, public_health, public_status
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.handles import with_generated_ids
from ccat_buffering.write.registry import ModelRegistry

__all__ = [
    "RETRY_AFTER_SECONDS",
    "Site",
    "critical_operation",
    "health_router",
    "install_error_handlers",
    "lifespan",
]

RETRY_AFTER_SECONDS = 5
"""What a 503 answers in ``Retry-After``: the buffer or database is expected back."""

STATE_KEY = "buffering"
"""Where :func:`lifespan` keeps the coordinator: ``app.state.buffering``."""

log = logging.getLogger(__name__)
Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


async def _check(what: str, probe: Awaitable[Any], timeout: float, site: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            await probe
    except Exception as exc:  # logged, not raised: the site starts and recovers by itself
        log.warning(
            "%s does not answer at start-up (%s: %s)",
            what,
            type(exc).__name__,
            exc,
            extra={"site": site},
        )


async def _select_one(coordinator: BufferingCoordinator, which: str) -> None:
    engine = coordinator.read_engine if which == "replica" else coordinator.engine
    assert engine is not None
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def lifespan(
    settings: BufferingSettings | None = None,
    *,
    registry: ModelRegistry,
    app_lifespan: Lifespan | None = None,
    drain: bool | None = None,
) -> Lifespan:
    """A lifespan for ``FastAPI(lifespan=...)`` that runs the site's coordinator.

    On start-up it builds the coordinator from ``settings`` (read from the
    environment when ``None``), checks that the backend and the databases
    answer (logging a warning, not failing, when one does not: reads recover
    when it comes back), and keeps it on ``app.state.buffering``; on shutdown
    it closes it. A service submits and reads; it drains and confirms
    replication only when ``drain`` says so, since the ``ccat-buffering
    worker`` does that for the site.

    Args:
        settings: The site's settings.
        registry: The mapped classes transactions may name.
        app_lifespan: The app's own lifespan, run inside this one (the
            coordinator is there already). The returned lifespan can as well
            be entered from an app's own: ``async with buffering(app): ...``.
        drain: Run the processor and the replication tracker in this
            process too. ``None``: the ``service_drains`` setting, which is
            on only for the ``memory://`` backend (the embedded demo, which
            no worker can reach).

    Returns:
        The lifespan.
    """

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[Any]:
        coordinator = BufferingCoordinator.from_settings(settings, registry=registry, start=False)
        timeout, site = coordinator.settings.read_timeout, coordinator.backend.site
        await _check(
            f"the backend ({coordinator.describe()['backend']})",
            coordinator.backend.buffer.stats(),
            timeout,
            site,
        )
        await _check("the main database", _select_one(coordinator, "main"), timeout, site)
        if coordinator.read_engine is not None:
            await _check("the replica", _select_one(coordinator, "replica"), timeout, site)
        async with coordinator:
            if coordinator.settings.drains_in_service if drain is None else drain:
                coordinator.start()
                # Let the background tasks begin before anything may stop them.
                await asyncio.sleep(0)
            setattr(app.state, STATE_KEY, coordinator)
            try:
                if app_lifespan is None:
                    yield None
                else:
                    async with app_lifespan(app) as state:
                        yield state
            finally:
                delattr(app.state, STATE_KEY)

    return run


def _coordinator(request: Request) -> BufferingCoordinator:
    coordinator = getattr(request.app.state, STATE_KEY, None)
    if coordinator is None:
        raise RuntimeError(
            "no buffering coordinator on app.state: create the app with "
            "FastAPI(lifespan=ccat_buffering.web.fastapi.lifespan(...))"
        )
    return typing.cast(BufferingCoordinator, coordinator)


Site = Annotated[BufferingCoordinator, Depends(_coordinator)]
"""A route parameter annotated ``Site`` receives the site's coordinator."""


def _builder_parameter(handler: Callable[..., Any], hints: dict[str, Any]) -> str:
    names = [name for name, hint in hints.items() if hint is TransactionBuilder]
    if len(names) != 1:
        raise TypeError(
            f"{handler.__qualname__} must declare exactly one parameter annotated "
            f"TransactionBuilder for @critical_operation (found {len(names)})"
        )
    return names[0]


def _has_steps(builder: TransactionBuilder) -> bool:
    # A handler that added no step submits nothing.
    return bool(builder.steps)


def critical_operation(handler: Handler | None = None, *, endpoint: str | None = None) -> Any:
    """Submit what a route handler builds, as the origin's decorator did.

    The handler declares one parameter annotated
    :class:`~ccat_buffering.TransactionBuilder` and gets a fresh builder per
    request (FastAPI never sees that parameter). When the handler returns, the
    built transaction is submitted through the site's coordinator (buffered at
    a secondary site, applied at a main site), and the response carries
    ``X-Transaction-Id`` and ``X-Transaction-State``. The handler's return
    value is the response; a handler that adds no step submits nothing. A
    :class:`~ccat_buffering.write.handles.RecordHandle` in the returned dict (or
    list) becomes the record's key once submitted: at a ``main`` site the key
    the database generated (an identity column), so ``return {"id": note}``
    answers ``201 {"id": 42}``.
    value is the response; a handler that adds no step submits nothing.
    A request with an ``Idempotency-Key`` header becomes at most one
    transaction: see :mod:`ccat_buffering.web.fastapi_idempotency`.

    Use it below the route decorator: ``@router.post(...)`` then
    ``@critical_operation``.

    Args:
        handler: The route handler (an ``async def``).
        endpoint: The transaction's endpoint name; the handler's name by default.

    Returns:
        The wrapped handler.

    Raises:
        TypeError: The handler declares no parameter annotated
            ``TransactionBuilder``, or several.
    """
    if handler is None:
        return functools.partial(critical_operation, endpoint=endpoint)
    hints = typing.get_type_hints(handler, include_extras=True)
    name = _builder_parameter(handler, hints)
    signature = inspect.signature(handler)
    kept = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in signature.parameters.values()
        if p.name != name
    ]
    hidden = [
        inspect.Parameter("ccat_site__", inspect.Parameter.KEYWORD_ONLY, annotation=Site),
        inspect.Parameter("ccat_response__", inspect.Parameter.KEYWORD_ONLY, annotation=Response),
        inspect.Parameter("ccat_request__", inspect.Parameter.KEYWORD_ONLY, annotation=Request),
    ]
    where = endpoint or handler.__name__

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        site: BufferingCoordinator = kwargs.pop("ccat_site__")
        response: Response = kwargs.pop("ccat_response__")
        request: Request = kwargs.pop("ccat_request__")
        builder = TransactionBuilder(where, max_payload_bytes=site.settings.max_payload_bytes)
        key = request.headers.get("Idempotency-Key")
        if key is not None:  # one transaction per key: see ccat_buffering.web.fastapi_idempotency
            from ccat_buffering.web.fastapi_idempotency import idempotent

            return await idempotent(
                site,
                request,
                response,
                key,
                builder,
                lambda: handler(*args, **{name: builder}, **kwargs),
            )
        result = await handler(*args, **{name: builder}, **kwargs)
        if _has_steps(builder):
            status = await site.submit(builder.build())
            result = with_generated_ids(result, status)  # a returned handle becomes its key
            target = result if isinstance(result, Response) else response
            target.headers["X-Transaction-Id"] = status.transaction_id
            target.headers["X-Transaction-State"] = str(status.state)
        return result

    parameters = [*kept, *hidden]
    positional = [p for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    keyword = [p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*positional, *keyword],
        return_annotation=hints.get("return", signature.return_annotation),
    )
    del wrapper.__wrapped__  # FastAPI must read the signature above, not the handler's
    return wrapper


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": message},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Answer the library's errors with the HTTP status they mean.

    * :class:`~ccat_buffering.TransactionValidationError` (bad input, nothing
      written): 422 with the message;
    * :class:`~ccat_buffering.BackendError` (the buffer is full or cannot be
      reached): 503 with ``Retry-After``;
    * :class:`~ccat_buffering.DatabaseUnavailableError` (a main site's
      database, or the database a read needs): 503 with ``Retry-After``;
    * :class:`~ccat_buffering.ConflictError` (a main site's write met another
      party's, and its policy rejected it): 409 with the message (base, mine
      and theirs); the client reads the row again.

    A 503 says the kind of outage, never the host (the full text is logged).

    Args:
        app: The application.
    """

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The full (masked) text names hosts: it goes to the log, not to the caller.
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _unavailable(public_error(typing.cast(BufferingError, exc)))

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    app.add_exception_handler(TransactionValidationError, invalid)
    app.add_exception_handler(ConflictError, conflict)
    app.add_exception_handler(BackendError, unavailable)
    app.add_exception_handler(DatabaseUnavailableError, unavailable)


def health_router(
    prefix: str = "/buffering",
    *,
    audit: bool = False,
    auth: Callable[..., Any] | None = None,
) -> APIRouter:
    """Routes for probes and clients: the site's health and a transaction's status.

    * ``GET {prefix}/health``: the health as JSON (``healthy`` included);
      200 when healthy, 503 otherwise;
    * ``GET {prefix}/transactions/{transaction_id}``: the status as JSON, or
      404 when it is unknown or expired; with ``?wait=committed`` or
      ``?wait=replicated`` (and ``&timeout=`` seconds, 30 by default, 300 at
      most) a long poll: see :func:`ccat_buffering.web.fastapi_waits.long_poll`.

    Without ``auth`` they are safe to expose: they show the reduced views of
    :mod:`ccat_buffering.web.public_views` (no row data, credentials, hosts,
    paths or process ids; errors as their kind). With it, every route
    depends on it and shows everything (passwords masked).

    Args:
        prefix: Where the routes live.
        audit: Let health scan the site's keys for leaks (costly on a large
            Redis; ``ccat-buffering keys audit`` does it on demand).
        auth: The service's own auth dependency (anything ``Depends()``
            takes); it refuses a caller by raising, as FastAPI's security
            dependencies do.

    Returns:
        The router, for ``app.include_router``.
    """
    guarded = auth is not None
    router = APIRouter(
        prefix=prefix, tags=["buffering"], dependencies=[Depends(auth)] if guarded else []
    )

    @router.get("/health")
    async def health(site: Site) -> JSONResponse:
        report = await site.health(audit=audit)
        shown = report.model_dump(mode="json") if guarded else public_health(report)
        return JSONResponse(shown, status_code=200 if report.healthy else 503)

    @router.get("/transactions/{transaction_id}")
    async def transaction(
        transaction_id: str,
        site: Site,
        wait: Literal["committed", "replicated"] | None = None,
        timeout: Annotated[float, Query(gt=0, le=300)] = 30.0,
    ) -> JSONResponse:
        if wait is not None:  # a long poll: see ccat_buffering.web.fastapi_waits
            from ccat_buffering.web.fastapi_waits import long_poll

            return await long_poll(site, transaction_id, wait, timeout, full=guarded)
        status = await site.status(transaction_id)
        if status is None:
            return JSONResponse(
                {"detail": f"no transaction {transaction_id!r} (unknown, or its status expired)"},
                status_code=404,
            )
        return JSONResponse(status.model_dump(mode="json") if guarded else public_status(status))

    return router
