"""Database-generated values come back (issue 21, item 4).

An identity key and server defaults, on SQLite and PostgreSQL (psycopg and
asyncpg: the executor's session path reads them back with ``RETURNING``), with
the status stored in memory and in Redis; a current-time server default takes
the write time unless its column opts out.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pg import fresh_database
from pydantic import BaseModel
from services import REDIS_URL, forget_site, redis_client
from sqlalchemy import DateTime, Identity, Integer, String, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering import BufferingCoordinator, BufferingSettings, TransactionBuilder
from ccat_buffering.drain.database import create_engine
from ccat_buffering.testing import new_site_name
from ccat_buffering.web.fastapi import critical_operation, lifespan
from ccat_buffering.write.columns import WRITE_TIME_INFO
from ccat_buffering.write.models import Transaction, TransactionState
from ccat_buffering.write.registry import ModelRegistry


class GenBase(DeclarativeBase):
    pass


class Note(GenBase):
    __tablename__ = "gen_note"

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    text: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), server_default="new")
    written_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    applied_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), info={WRITE_TIME_INFO: False}
    )


REGISTRY = ModelRegistry.from_base(GenBase)


@asynccontextmanager
async def _databases(kind: str, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """A main database and an empty stand-in replica with the schema, as URLs."""
    if kind == "sqlite":
        urls = (f"sqlite+aiosqlite:///{tmp_path / n}.db" for n in ("main", "replica"))
        main, replica = urls
        yield await _with_schema(main), await _with_schema(replica)
        return
    async with fresh_database() as first, fresh_database() as second:
        driver = f"postgresql+{kind}"
        main, replica = (
            make_url(u).set(drivername=driver).render_as_string(hide_password=False)
            for u in (first, second)
        )
        yield await _with_schema(main), await _with_schema(replica)


async def _with_schema(url: str) -> str:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(GenBase.metadata.create_all)
    await engine.dispose()
    return url


@asynccontextmanager
async def _site(
    database: str, backend: str, site_type: str, tmp_path: Path
) -> AsyncIterator[BufferingCoordinator]:
    name = new_site_name()
    async with AsyncExitStack() as stack:
        main, replica = await stack.enter_async_context(_databases(database, tmp_path))
        if backend == "redis":
            client: Any = await redis_client()
            stack.push_async_callback(client.aclose)
            stack.push_async_callback(forget_site, client, f"site:{{{name}}}:*")
        settings = BufferingSettings(
            site_name=name,
            site_type=site_type,  # type: ignore[arg-type]
            backend_url=REDIS_URL if backend == "redis" else "memory://",
            database_url=main,
            replica_url=replica,
        )
        site = await stack.enter_async_context(
            BufferingCoordinator.from_settings(settings, registry=REGISTRY, start=False)
        )
        await site.prepare_database()
        yield site


def _note(text: str) -> tuple[Transaction, str]:
    tx = TransactionBuilder("add_note", registry=REGISTRY)
    handle = tx.create(Note, {"text": text})
    assert handle.id is None  # the database makes the key
    return tx.build(), handle.step_id


async def _row(site: BufferingCoordinator, key: int) -> Any:
    async with site.engine.connect() as conn:
        return (await conn.execute(select(Note).where(Note.id == key))).one()


def _count_pipelined(site: BufferingCoordinator) -> list[int]:
    """Calls of the executor's pipelined path from now on (white box: which path ran)."""
    calls: list[int] = []
    path = site.executor._pipelined
    original = path.run

    async def counted(*args: Any) -> Any:
        calls.append(1)
        return await original(*args)

    path.run = counted  # type: ignore[method-assign]
    return calls


DATABASES = ["sqlite", "psycopg", "asyncpg"]
BACKENDS = ["memory", "redis"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("database", DATABASES)
async def test_a_buffered_create_gets_its_generated_values_once_committed(
    database: str, backend: str, tmp_path: Path
) -> None:
    async with _site(database, backend, "secondary", tmp_path) as site:
        first, step = _note("first")
        second, _ = _note("second")
        written = first.steps[0].data["written_at"]  # type: ignore[index]
        assert isinstance(written, dt.datetime)  # the write time, taken when it was built
        assert "applied_at" not in first.steps[0].data  # type: ignore[operator]
        status = await site.submit(first)
        await site.submit(second)
        assert status.state is TransactionState.BUFFERED and status.generated == {}
        pipelined = _count_pipelined(site)
        assert await site.processor.drain(timeout=30)
        # psycopg applies them through its pipeline (one round trip), the others
        # through the session path
        assert bool(pipelined) is (database == "psycopg")

        status = await site.status(first.transaction_id)
        assert status is not None and status.state is TransactionState.COMMITTED
        generated = status.generated[step]
        assert set(generated) == {"id", "state", "applied_at"}
        assert generated["state"] == "new"
        key = generated["id"]
        assert isinstance(key, int)
        later = await site.status(second.transaction_id)
        assert later is not None and later.generated[step]["id"] == key + 1

        row = await _row(site, key)
        assert row.text == "first"
        # a current-time server default recorded the write time, to the microsecond;
        # the column that opted out has the database's own time
        stored = row.written_at if row.written_at.tzinfo else row.written_at.replace(tzinfo=dt.UTC)
        assert stored == written
        assert row.applied_at is not None

        # The site reads the row by its generated key, from the buffer: the
        # replica (empty here) has not got it yet.
        record = await site.reads.get(Note, key)
        assert record is not None and record["text"] == "first" and record["state"] == "new"
        assert (await site.reads.get(Note, key + 1))["text"] == "second"  # type: ignore[index]
        async with site.read_engine.connect() as conn:  # type: ignore[union-attr]
            assert (await conn.execute(select(func.count(Note.id)))).scalar_one() == 0


@pytest.mark.parametrize(
    ("database", "backend"), [("sqlite", "memory"), ("psycopg", "redis"), ("asyncpg", "redis")]
)
async def test_a_main_sites_submit_returns_the_generated_values_at_once(
    database: str, backend: str, tmp_path: Path
) -> None:
    async with _site(database, backend, "main", tmp_path) as site:
        tx, step = _note("at main")
        pipelined = _count_pipelined(site)
        status = await site.submit(tx)
        assert bool(pipelined) is (database == "psycopg")
        assert status.state is TransactionState.COMMITTED
        key = status.generated[step]["id"]
        assert (await _row(site, key)).text == "at main"
        stored = await site.status(tx.transaction_id)
        assert stored is not None and stored.generated == status.generated
        # read by its generated key at once, though the (stand-in) replica lacks it
        record = await site.reads.get(Note, key)
        assert record is not None and record["text"] == "at main"


class NoteIn(BaseModel):
    text: str


async def test_the_fastapi_201_carries_the_generated_id_at_a_main_site(tmp_path: Path) -> None:
    async with _databases("sqlite", tmp_path) as (main, _replica):
        settings = BufferingSettings(site_name=new_site_name(), site_type="main", database_url=main)
        app = FastAPI(lifespan=lifespan(settings, registry=REGISTRY))

        @app.post("/notes", status_code=201)
        @critical_operation
        async def add_note(body: NoteIn, tx: TransactionBuilder) -> dict[str, Any]:
            note = tx.create(Note, {"text": body.text})
            return {"id": note}

        async with app.router.lifespan_context(app):
            await app.state.buffering.prepare_database()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                one = await client.post("/notes", json={"text": "a"})
                two = await client.post("/notes", json={"text": "b"})
        assert one.status_code == 201 and two.status_code == 201
        assert isinstance(one.json()["id"], int) and two.json()["id"] == one.json()["id"] + 1
        assert one.headers["X-Transaction-State"] == "committed"
        uuid.UUID(one.headers["X-Transaction-Id"])
