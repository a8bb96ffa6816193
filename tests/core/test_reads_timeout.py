"""Reads never hang: a PostgreSQL replica behind a link that drops packets."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from pg import fresh_database
from sqlalchemy import String, insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.drain.database import create_engine
from ccat_buffering.errors import DatabaseUnavailableError
from ccat_buffering.read.reads import Reads
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend

TIMEOUT = 0.5


class Base(DeclarativeBase):
    pass


class Scan(Base):
    __tablename__ = "scan"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    target: Mapped[str] = mapped_column(String(32))


@pytest_asyncio.fixture
async def relayed() -> AsyncIterator[tuple[AsyncEngine, LoopbackRelay]]:
    async with fresh_database() as url:
        direct = create_engine(url)
        async with direct.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.execute(insert(Scan), [{"id": "in-db", "target": "moon"}])
        await direct.dispose()
        target = make_url(url)
        relay = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432)
        await relay.start()
        engine = create_engine(
            target.set(host="127.0.0.1", port=relay.port).render_as_string(False)
        )
        try:
            yield engine, relay
        finally:
            await relay.stop()
            await engine.dispose()


async def _raises_in_time(call: object) -> DatabaseUnavailableError:
    began = time.monotonic()
    try:
        await call  # type: ignore[misc]
    except DatabaseUnavailableError as exc:
        elapsed = time.monotonic() - began
        assert elapsed < TIMEOUT + 2.0, f"the read took {elapsed:.1f} s"
        return exc
    raise AssertionError("the read did not fail")


async def test_a_read_over_a_hanging_link_times_out(
    relayed: tuple[AsyncEngine, LoopbackRelay],
) -> None:
    engine, relay = relayed
    registry = ModelRegistry([Scan])
    backend = MemoryBackend(f"test-{uuid.uuid4().hex[:8]}")
    manager = TransactionManager(backend, registry=registry)
    tx = TransactionBuilder("scan")
    buffered = tx.create(Scan, {"target": "moon"})
    await manager.buffer(tx.build())
    reads = Reads(backend.cache, registry, engine, timeout=TIMEOUT)
    async with asyncio.timeout(30):  # whatever happens, the test itself never hangs
        assert len(await reads.list("Scan", target="moon")) == 2

        relay.hang()
        error = await _raises_in_time(reads.list("Scan", target="moon"))
        assert "did not answer a read within 0.5 s" in str(error)
        await _raises_in_time(reads.get("Scan", "in-db"))
        # A fresh connection hangs as well: the pool's was dropped.
        await _raises_in_time(reads.get("Scan", buffered.id))

        began = time.monotonic()
        partial = await reads.list("Scan", target="moon", allow_partial=True)
        assert time.monotonic() - began < TIMEOUT + 2.0
        assert partial.partial and partial.reason and "0.5 s" in partial.reason
        assert [r["id"] for r in partial] == [buffered.id] and partial[0].partial
        record = await reads.get("Scan", buffered.id, allow_partial=True)
        assert record is not None and record.partial and record["target"] == "moon"
        # The buffer does not know the row: nothing to show, so the outage is said.
        await _raises_in_time(reads.get("Scan", "in-db", allow_partial=True))

        relay.answer()
        deadline = time.monotonic() + 10
        while True:
            try:
                whole = await reads.list("Scan", target="moon")
                break
            except DatabaseUnavailableError:
                assert time.monotonic() < deadline, "reads never came back after the link did"
        assert not whole.partial and sorted(r["id"] for r in whole) == sorted(
            ["in-db", buffered.id]
        )
