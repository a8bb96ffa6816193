"""ccat_buffering.web.fastapi, and the docs page's observatory service, via httpx.ASGITransport."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from servers import Replicated
from services import REDIS_URL, forget_site, redis_client
from sqlalchemy import String, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering import TransactionBuilder
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.errors import BackendUnavailableError
from ccat_buffering.testing import new_site_name
from ccat_buffering.web.fastapi import (
    Site,
    critical_operation,
    health_router,
    install_error_handlers,
    lifespan,
)
from ccat_buffering.web.fastapi_waits import waits_router
from ccat_buffering.write.registry import ModelRegistry

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "observatory_service.py"


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    text: Mapped[str] = mapped_column(String(64))


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give a client that talks to it in process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://site") as client:
            yield client


def _memory_settings(tmp_path: Path, **extra: Any) -> BufferingSettings:
    return BufferingSettings(
        site_name=new_site_name(),
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'main.db'}",
        poll_interval=0.01,
        replication_poll_interval=0.01,
        **extra,
    )


async def _prepare(settings: BufferingSettings, base: type[DeclarativeBase]) -> None:
    engine = create_engine(settings.database_url)
    async with engine.begin() as conn:
        await conn.run_sync(base.metadata.create_all)
    await TransactionExecutor(engine, ModelRegistry.from_base(base)).create_ledger()
    await engine.dispose()


def _notes_app(settings: BufferingSettings, app_lifespan: Any = None) -> FastAPI:
    app = FastAPI(
        lifespan=lifespan(
            settings, registry=ModelRegistry.from_base(Base), app_lifespan=app_lifespan
        )
    )
    install_error_handlers(app)
    app.include_router(health_router())
    app.include_router(waits_router())

    @app.post("/notes", status_code=201)
    @critical_operation
    async def add(body: dict[str, Any], tx: TransactionBuilder, site: Site) -> dict[str, Any]:
        if body.get("skip"):
            return {"skipped": True}
        note = tx.create(Note, body)
        return {"id": note.id, "site": site.backend.site}

    @app.get("/notes/{note_id}")
    async def get(note_id: str, site: Site) -> dict[str, Any] | None:
        return await site.reads.get("Note", note_id)

    @app.get("/down")
    async def down() -> None:
        raise BackendUnavailableError("redis at 127.0.0.1:1 cannot be reached")

    return app


async def test_critical_operation_submits_what_the_handler_builds(tmp_path: Path) -> None:
    settings = _memory_settings(tmp_path)
    await _prepare(settings, Base)
    async with serving(_notes_app(settings)) as client:
        created = await client.post("/notes", json={"text": "hello"})
        assert created.status_code == 201, created.text
        assert created.json()["site"] == settings.site_name
        tx_id = created.headers["X-Transaction-Id"]
        assert created.headers["X-Transaction-State"] == "buffered"
        note = await client.get(f"/notes/{created.json()['id']}")
        assert note.json() == {"id": created.json()["id"], "text": "hello"}
        status = await client.get(f"/buffering/transactions/{tx_id}")
        assert status.status_code == 200 and status.json()["transaction_id"] == tx_id
        # A handler that adds no step submits nothing.
        skipped = await client.post("/notes", json={"skip": True})
        assert skipped.status_code == 201 and "X-Transaction-Id" not in skipped.headers
        # The builder is not a request parameter.
        schema = (await client.get("/openapi.json")).json()
        parameters = schema["paths"]["/notes"]["post"].get("parameters", [])
        assert [p["name"] for p in parameters] == []


async def test_errors_become_http_statuses(tmp_path: Path) -> None:
    settings = _memory_settings(tmp_path)
    await _prepare(settings, Base)
    async with serving(_notes_app(settings)) as client:
        invalid = await client.post("/notes", json={"text": "x", "colour": "red"})
        assert invalid.status_code == 422 and "colour" in invalid.json()["detail"]
        down = await client.get("/down")
        assert down.status_code == 503 and down.headers["Retry-After"] == "5"
        assert "cannot be reached" in down.json()["detail"]
        missing = await client.get(f"/buffering/transactions/{uuid.uuid4()}")
        assert missing.status_code == 404
        health = await client.get("/buffering/health")
        assert health.status_code == 200, health.json()
        assert health.json()["healthy"] is True and health.json()["notices"]


async def test_a_main_site_answers_503_while_its_database_is_down(tmp_path: Path) -> None:
    settings = _memory_settings(tmp_path, site_type="main")
    await _prepare(settings, Base)
    (tmp_path / "main.db").unlink()
    (tmp_path / "main.db").mkdir()  # a database that cannot be opened
    async with serving(_notes_app(settings)) as client:
        answer = await client.post("/notes", json={"text": "x"})
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"


async def test_a_main_site_answers_409_to_a_write_that_met_another(tmp_path: Path) -> None:
    settings = _memory_settings(tmp_path, site_type="main")
    await _prepare(settings, Base)
    async with serving(_notes_app(settings)) as client:
        key = str(uuid.uuid4())
        first = await client.post("/notes", json={"id": key, "text": "mine"})
        assert first.status_code == 201, first.text
        again = await client.post("/notes", json={"id": key, "text": "another"})
        assert again.status_code == 409 and "insert_exists" in again.json()["detail"]
        same = await client.post("/notes", json={"id": key, "text": "mine"})
        assert same.status_code == 201  # equal to the row: skipped, nothing to resolve
        assert (await client.get(f"/notes/{key}")).json()["text"] == "mine"


async def test_the_lifespan_runs_the_apps_own_inside(tmp_path: Path) -> None:
    settings = _memory_settings(tmp_path)
    await _prepare(settings, Base)
    seen: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        seen.append(app.state.buffering.backend.site)
        yield
        seen.append("closed")

    async with serving(_notes_app(settings, own)) as client:
        assert (await client.post("/notes", json={"text": "x"})).status_code == 201
    assert seen == [settings.site_name, "closed"]


async def test_a_long_poll_answers_when_the_state_is_reached(tmp_path: Path) -> None:
    settings = _memory_settings(tmp_path, wait_poll_interval=0.01)
    await _prepare(settings, Base)
    async with serving(_notes_app(settings)) as client:  # memory://: the service drains
        created = await client.post("/notes", json={"text": "hello"})
        tx_id = created.headers["X-Transaction-Id"]
        answer = await client.get(f"/buffering/transactions/{tx_id}?wait=replicated&timeout=20")
        assert answer.status_code == 200 and answer.json()["state"] == "replicated"
        unknown = await client.get(f"/buffering/transactions/{uuid.uuid4()}?wait=committed")
        assert unknown.status_code == 404
        too_long = await client.get(f"/buffering/transactions/{tx_id}?wait=committed&timeout=301")
        assert too_long.status_code == 422
        events = []
        async with client.stream("GET", f"/buffering/transactions/{tx_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line.removeprefix("data: ")))
        assert [e["state"] for e in events] == ["replicated"]  # terminal: the stream ends


async def test_a_long_poll_times_out_with_the_last_state(tmp_path: Path) -> None:
    settings = _memory_settings(tmp_path, service_drains=False, wait_poll_interval=0.01)
    await _prepare(settings, Base)
    async with serving(_notes_app(settings)) as client:
        created = await client.post("/notes", json={"text": "hello"})
        tx_id = created.headers["X-Transaction-Id"]
        answer = await client.get(f"/buffering/transactions/{tx_id}?wait=committed&timeout=0.2")
        assert answer.status_code == 202 and answer.json()["state"] == "buffered"
        events = []
        url = f"/buffering/transactions/{tx_id}/events?timeout=0.2"
        async with client.stream("GET", url) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    events.append(line)
        assert events == ["event: status"]  # the state now, then the timeout ends it


async def test_an_idempotency_key_maps_retries_to_one_transaction(tmp_path: Path) -> None:
    settings = _memory_settings(tmp_path, service_drains=False)
    await _prepare(settings, Base)
    app = _notes_app(settings)
    async with serving(app) as client:
        key = {"Idempotency-Key": "note-42"}
        first = await client.post("/notes", json={"text": "hello"}, headers=key)
        again = await client.post("/notes", json={"text": "hello"}, headers=key)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()  # the first answer, the same pre-generated id
        assert again.headers["X-Transaction-Id"] == first.headers["X-Transaction-Id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        other = await client.post("/notes", json={"text": "other"}, headers=key)
        assert other.status_code == 422 and "another request" in other.json()["detail"]
        together = await asyncio.gather(
            *(
                client.post("/notes", json={"text": "x"}, headers={"Idempotency-Key": "k2"})
                for _ in range(10)
            )
        )
        assert len({r.headers["X-Transaction-Id"] for r in together}) == 1
        assert len({r.json()["id"] for r in together}) == 1
        assert (await app.state.buffering.backend.buffer.stats()).depth == 2


def test_critical_operation_needs_one_builder_parameter() -> None:
    async def no_builder(x: int) -> None:
        return None

    with pytest.raises(TypeError, match="exactly one parameter annotated TransactionBuilder"):
        critical_operation(no_builder)


# -- the docs page's service against Redis and a streaming replica ------------------


def _load_example() -> ModuleType:
    name = f"observatory_service_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def _until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_the_observatory_service_through_an_outage(
    replicated: Replicated, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await redis_client()
    service = _load_example()
    name = f"ccat_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(replicated.primary_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    primary_url = make_url(replicated.primary_url).set(database=name)
    replica_url = make_url(replicated.replica_url).set(database=name).render_as_string(False)
    primary = create_engine(primary_url.render_as_string(False))
    async with primary.begin() as conn:
        await conn.run_sync(service.Base.metadata.create_all)
    await TransactionExecutor(primary, ModelRegistry.from_base(service.Base)).create_ledger()
    await primary.dispose()
    link = LoopbackRelay("127.0.0.1", primary_url.port or 5432)  # down until started
    site = new_site_name()
    for key, value in {
        "SITE_NAME": site,
        "BACKEND_URL": REDIS_URL,
        "DATABASE_URL": primary_url.set(port=link.port).render_as_string(False),
        "REPLICA_URL": replica_url,
        "POLL_INTERVAL": "0.02",
        "REPLICATION_POLL_INTERVAL": "0.02",
        "OUTAGE_BASE_DELAY": "0.05",
        "OUTAGE_MAX_DELAY": "0.2",
        # One process here: the service drains too (the two-process shape is
        # tested in test_service_and_worker.py).
        "SERVICE_DRAINS": "true",
    }.items():
        monkeypatch.setenv(f"CCAT_BUFFERING_{key}", value)
    try:
        async with serving(service.app) as http:
            await _until(lambda: _replica_has_tables(replica_url), "tables on the replica")
            # The link to the main database is down: writes buffer, reads see them.
            started_ = await http.post("/observations", json={"target": "Orion KL"})
            assert (
                started_.status_code == 201
                and started_.headers["X-Transaction-State"] == "buffered"
            )
            obs_id = started_.json()["id"]
            files = [{"path": f"/raw/{obs_id}/{i}.fits", "size_bytes": 100 + i} for i in range(12)]
            registered = await http.post(f"/observations/{obs_id}/files", json=files)
            assert registered.status_code == 201 and len(registered.json()["ids"]) == 12
            finished = await http.post(f"/observations/{obs_id}/finish")
            last_tx = finished.headers["X-Transaction-Id"]
            before = (await http.get(f"/observations/{obs_id}")).json()
            assert before["status"] == "finished" and before["finished_at"] is not None
            listed = (await http.get(f"/observations/{obs_id}/files")).json()
            assert sorted(f["size_bytes"] for f in listed) == list(range(100, 112))

            async def paused() -> bool:
                return (await http.get("/buffering/health")).status_code == 503

            await _until(paused, "health says the processor is paused")

            await link.start()  # the link is back: drain, replicate, release

            async def replicated_() -> bool:
                got = await http.get(f"/buffering/transactions/{last_tx}")
                return got.json()["state"] == "replicated"

            await _until(replicated_, "the last transaction replicated")
            after = (await http.get(f"/observations/{obs_id}")).json()
            assert after == before and list(after) == list(before)
            again = (await http.get(f"/observations/{obs_id}/files")).json()
            key = lambda f: f["path"]  # noqa: E731
            assert sorted(again, key=key) == sorted(listed, key=key)

            async def resumed() -> bool:
                # The test Redis keeps no AOF, which health warns of for good.
                answer = (await http.get("/buffering/health")).json()
                return not any(w.startswith("processor paused") for w in answer["warnings"])

            await _until(resumed, "health no longer says the processor is paused")
    finally:
        await link.stop()
        await forget_site(client, f"site:{{{site}}}:*")
        await client.aclose()  # type: ignore[attr-defined]
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def _replica_has_tables(url: str) -> bool:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1 FROM raw_file LIMIT 1"))
        return True
    except Exception:
        return False
    finally:
        await engine.dispose()
