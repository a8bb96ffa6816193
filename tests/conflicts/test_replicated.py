"""Three parties on PostgreSQL as deployed: the main site, two sites with Redis and a replica.

The main site applies directly; sites A and B buffer in their own Redis site
and read through a streaming replica of the main database (one replica server
stands for each site's own), and reach the main database through a relay that
the test cuts and restores. Each site's base comes from its replica, overlaid
by its own buffered writes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from servers import Replicated, streaming_replica
from services import REDIS_URL, forget_site, redis_client, require_redis, started
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from writers import Base, Note

from ccat_buffering import BufferingCoordinator, BufferingSettings, TransactionBuilder
from ccat_buffering.conflicts.log import list_conflicts
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.models import TransactionState
from ccat_buffering.registry import ModelRegistry


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    with started(streaming_replica()) as servers:
        yield servers


async def _until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def database(replicated: Replicated) -> AsyncIterator[tuple[str, str]]:
    name = f"ccat_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(replicated.primary_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    primary = make_url(replicated.primary_url).set(database=name).render_as_string(False)
    replica = make_url(replicated.replica_url).set(database=name).render_as_string(False)
    try:
        yield primary, replica
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def _site(name: str, kind: str, url: str, replica: str, backend: str) -> BufferingCoordinator:
    settings = BufferingSettings(  # type: ignore[call-arg]
        site_name=name,
        site_type=kind,
        backend_url=backend,
        database_url=url,
        replica_url=replica,
        poll_interval=0.01,
        replication_poll_interval=0.02,
        outage_base_delay=0.05,
        outage_max_delay=0.2,
        batch_size_adaptive=False,
    )
    return BufferingCoordinator.from_settings(
        settings, registry=ModelRegistry.from_base(Base), start=False
    )


@pytest.mark.parametrize("b_first", [True, False], ids=["b-restored-first", "a-restored-first"])
async def test_same_field_through_cut_links_and_replicas(
    database: tuple[str, str], b_first: bool
) -> None:
    await require_redis()
    primary, replica = database
    target = make_url(primary)
    relays = {r: LoopbackRelay("127.0.0.1", target.port or 5432) for r in ("a", "b")}
    tag = uuid.uuid4().hex[:8]
    main = _site(f"main-{tag}", "main", primary, replica, "memory://")
    sites = {
        r: _site(
            f"test-{r}-{tag}",
            "secondary",
            target.set(port=relays[r].port).render_as_string(False),
            replica,
            REDIS_URL,
        )
        for r in ("a", "b")
    }
    try:
        async with main.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await main.prepare_database()
        key = uuid.uuid4()
        build = TransactionBuilder("create", registry=main.registry)
        build.create(Note, {"id": key, "title": "n", "status": "new"})
        await main.submit(build.build())

        async def everyone_sees_it() -> bool:
            try:
                row = await sites["a"].reads.get(Note, key)
            except Exception:
                return False
            return row is not None

        await _until(everyone_sees_it, "the replica to show the row")
        statuses = {}
        for role, value in (("a", "a"), ("b", "b")):  # links cut: relays not listening
            tx = TransactionBuilder("edit", registry=sites[role].registry)
            tx.update(Note, key, {"status": value})
            statuses[role] = await sites[role].submit(tx.build())
            assert (await sites[role].reads.get(Note, key))["status"] == value  # its own write
        tx = TransactionBuilder("edit", registry=main.registry)
        tx.update(Note, key, {"status": "main"})
        await main.submit(tx.build())
        for role in ("b", "a") if b_first else ("a", "b"):
            assert await sites[role].processor.run_once() == 0  # still cut: paused
            await relays[role].start()
            assert await sites[role].processor.drain(timeout=30)
        async with main.engine.connect() as conn:
            status = (await conn.execute(select(Note.status).where(Note.id == key))).scalar()
            log = await list_conflicts(conn)
        assert status == "main"  # no silent overwrite, whichever link came back first
        assert sorted(r.transaction_id for r in log) == sorted(
            s.transaction_id for s in statuses.values()
        )
        assert all(r.conflict.theirs == {"status": "main"} for r in log)
        for role, site in sites.items():
            got = await site.status(statuses[role].transaction_id)
            assert got is not None and got.state is TransactionState.CONFLICTED

            async def shows_truth(site: BufferingCoordinator = site) -> bool:
                row = await site.reads.get(Note, key)
                return row is not None and row["status"] == "main"

            await _until(shows_truth, "the site's reads to show the main site's value")
    finally:
        for site in (main, *sites.values()):
            await site.aclose()
        for relay in relays.values():
            await relay.stop()
        client = await redis_client()
        for site in sites.values():
            await forget_site(client, f"site:{{{site.settings.site_name}}}:*")
        await client.aclose()  # type: ignore[attr-defined]
