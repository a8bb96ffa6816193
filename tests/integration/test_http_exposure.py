"""The library's HTTP routes: safe without an auth dependency, complete behind one.

A real PostgreSQL refuses a void social security number by a CHECK
constraint, so the transaction's recorded error quotes the row (``Failing row
contains (..., 078-05-1120)``); the routes must not show it, nor hosts, users, ports, paths or
process ids, to a caller the service did not authenticate.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest_asyncio
from fastapi import FastAPI, Header, HTTPException
from pg import fresh_database
from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering import TransactionBuilder
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.errors import BackendUnavailableError
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.testing import new_site_name
from ccat_buffering.web.fastapi import health_router, install_error_handlers
from ccat_buffering.web.fastapi_waits import waits_router
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry

SSN = "078-05-1120"


class Base(DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "person"
    # (A duplicate would be a conflict, insert_exists, not a failure: issue 19.)
    __table_args__ = (CheckConstraint(f"ssn <> '{SSN}'", name="person_ssn_not_void"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    ssn: Mapped[str] = mapped_column(String(16), unique=True)


async def operator_only(authorization: Annotated[str | None, Header()] = None) -> str:
    """A service's auth dependency: a bearer token, or 401."""
    if authorization != "Bearer let-me-in":
        raise HTTPException(status_code=401, detail="not authenticated")
    return "ana"


@pytest_asyncio.fixture
async def site() -> AsyncIterator[tuple[BufferingCoordinator, str]]:
    """A site whose second transaction was dead-lettered by a CHECK violation on ``ssn``."""
    async with fresh_database() as url:
        # psycopg quotes the row in its message (DETAIL: Failing row contains); the
        # password is there to be masked (the test server trusts any).
        url = url.replace("postgresql+asyncpg://postgres@", "postgresql+psycopg://postgres:pw9@")
        settings = BufferingSettings(
            site_name=new_site_name(),
            database_url=url,
            max_attempts=1,
        )
        coordinator = BufferingCoordinator.from_settings(
            settings, registry=ModelRegistry.from_base(Base), start=False
        )
        async with coordinator.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await coordinator.prepare_database()
        ids = []
        for ssn in ("123-45-6789", SSN):
            builder = TransactionBuilder("add_person")
            builder.create(Person, {"id": str(uuid.uuid4()), "ssn": ssn})
            ids.append((await coordinator.submit(builder.build())).transaction_id)
        for _ in range(20):
            if not await coordinator.processor.run_once():
                break
        status = await coordinator.status(ids[1])
        assert status is not None and status.state is TransactionState.FAILED, status
        assert status.last_error is not None and SSN in status.last_error
        try:
            yield coordinator, ids[1]
        finally:
            await coordinator.aclose()


def _app(coordinator: BufferingCoordinator, *, guarded: bool) -> FastAPI:
    app = FastAPI()
    app.state.buffering = coordinator
    install_error_handlers(app)
    app.include_router(health_router(auth=operator_only if guarded else None))
    app.include_router(waits_router(auth=operator_only if guarded else None))

    @app.get("/down")
    async def down() -> None:
        raise BackendUnavailableError("redis at 10.1.2.3:6379 cannot be reached: refused")

    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


HIDDEN = (SSN, "127.0.0.1", "localhost", "postgres", "pw9", "10.1.2.3", socket.gethostname())


def _shows_nothing_private(text: str) -> None:
    for secret in HIDDEN:
        assert secret not in text, f"{secret!r} shows in {text}"
    assert f"-{os.getpid()}-" not in text  # the lease holder names the worker's pid


async def test_without_auth_the_routes_show_no_row_data_hosts_or_paths(
    site: tuple[BufferingCoordinator, str],
) -> None:
    coordinator, failed = site
    await coordinator.backend.lease.acquire(coordinator.processor.holder, 60)
    async with _client(_app(coordinator, guarded=False)) as client:
        status = await client.get(f"/buffering/transactions/{failed}")
        health = await client.get("/buffering/health")
        down = await client.get("/down")
        waited = await client.get(f"/buffering/transactions/{failed}?wait=committed&timeout=1")
        events = await client.get(f"/buffering/transactions/{failed}/events?timeout=1")
    assert waited.status_code == 409 and waited.json()["last_error"] == "CheckViolation"
    _shows_nothing_private(waited.text)
    assert events.status_code == 200 and "CheckViolation" in events.text
    _shows_nothing_private(events.text)
    assert status.status_code == 200
    shown = status.json()
    assert shown["transaction_id"] == failed and shown["state"] == "failed"
    assert shown["last_error"] == "CheckViolation", shown  # its kind only
    _shows_nothing_private(status.text)
    assert health.status_code == 503  # a dead letter: unhealthy
    body = health.json()
    assert body["healthy"] is False and body["buffer"]["dead_letters"] == 1
    assert "dead letters" in body["warnings"]
    assert not {"backend", "database", "replica", "actions"} & body.keys()
    _shows_nothing_private(health.text)
    assert down.status_code == 503 and "cannot be reached" in down.json()["detail"]
    _shows_nothing_private(down.text)


async def test_behind_the_services_auth_dependency_the_routes_show_everything(
    site: tuple[BufferingCoordinator, str],
) -> None:
    coordinator, failed = site
    async with _client(_app(coordinator, guarded=True)) as client:
        for path in (
            "/buffering/health",
            f"/buffering/transactions/{failed}",
            f"/buffering/transactions/{failed}/events?timeout=1",
        ):
            refused = await client.get(path)
            assert refused.status_code == 401, path
            _shows_nothing_private(refused.text)
        headers = {"Authorization": "Bearer let-me-in"}
        status = await client.get(f"/buffering/transactions/{failed}", headers=headers)
        health = await client.get("/buffering/health", headers=headers)
        events = await client.get(
            f"/buffering/transactions/{failed}/events?timeout=1", headers=headers
        )
    assert SSN in status.json()["last_error"]  # the operator sees why it failed
    assert SSN in events.text
    body = health.json()
    assert "***" in body["database"] and "pw9" not in health.text  # passwords stay masked
    assert any("dead-letter" in warning for warning in body["warnings"])
