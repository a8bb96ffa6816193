"""Three parties on PostgreSQL as deployed: the main site, two sites with Redis and a replica.

The main site applies directly; sites A and B buffer in their own Redis site
and read through a streaming replica of the main database (one replica server
stands for each site's own), and reach the main database through a relay that
the test cuts and restores. Each site's base comes from its replica, overlaid
by its own buffered writes. The same field (a conflict for each site), distinct
fields (all survive) and a JSON column under ``merge`` (both sites' keys survive).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from servers import Replicated
from services import REDIS_URL, forget_site, redis_client, require_redis
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from writers import Base, Note

from ccat_buffering import BufferingCoordinator, BufferingSettings, TransactionBuilder
from ccat_buffering.conflicts.log import ConflictRecord, list_conflicts
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.write.models import TransactionState, TransactionStatus
from ccat_buffering.write.registry import ModelRegistry


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


def _site(
    name: str, kind: str, url: str, replica: str, backend: str, **extra: Any
) -> BufferingCoordinator:
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
        **extra,
    )
    return BufferingCoordinator.from_settings(
        settings, registry=ModelRegistry.from_base(Base), start=False
    )


@dataclass
class Deployment:
    """The main site, sites ``a`` and ``b`` behind cut links, and a row all of them saw."""

    main: BufferingCoordinator
    sites: dict[str, BufferingCoordinator]
    relays: dict[str, LoopbackRelay]
    key: uuid.UUID

    async def edit(self, party: BufferingCoordinator, data: dict[str, Any]) -> TransactionStatus:
        tx = TransactionBuilder("edit", registry=party.registry)
        tx.update(Note, self.key, data)
        return await party.submit(tx.build())

    async def restore(self, order: tuple[str, ...]) -> None:
        """Restore each site's link in ``order`` and drain it."""
        for role in order:
            assert await self.sites[role].processor.run_once() == 0  # still cut: paused
            await self.relays[role].start()
            assert await self.sites[role].processor.drain(timeout=30)

    async def main_row(self) -> tuple[Any, list[ConflictRecord]]:
        async with self.main.engine.connect() as conn:
            row = (await conn.execute(select(Note).where(Note.id == self.key))).first()
            return row, await list_conflicts(conn)


@asynccontextmanager
async def deployed(database: tuple[str, str], **extra: Any) -> AsyncIterator[Deployment]:
    """Three parties over one main database and its replica; the row made and replicated."""
    await require_redis()
    primary, replica = database
    target = make_url(primary)
    relays = {r: LoopbackRelay("127.0.0.1", target.port or 5432) for r in ("a", "b")}
    tag = uuid.uuid4().hex[:8]
    main = _site(f"main-{tag}", "main", primary, replica, "memory://", **extra)
    sites = {
        r: _site(
            f"test-{r}-{tag}",
            "secondary",
            target.set(port=relays[r].port).render_as_string(False),
            replica,
            REDIS_URL,
            **extra,
        )
        for r in ("a", "b")
    }
    try:
        async with main.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await main.prepare_database()
        key = uuid.uuid4()
        build = TransactionBuilder("create", registry=main.registry)
        build.create(Note, {"id": key, "title": "n", "status": "new", "meta": {"object": "m31"}})
        await main.submit(build.build())

        async def everyone_sees_it() -> bool:
            try:
                row = await sites["a"].reads.get(Note, key)
            except Exception:
                return False
            return row is not None

        await _until(everyone_sees_it, "the replica to show the row")
        yield Deployment(main, sites, relays, key)
    finally:
        for site in (main, *sites.values()):
            await site.aclose()
        for relay in relays.values():
            await relay.stop()
        client = await redis_client()
        for site in sites.values():
            await forget_site(client, f"site:{{{site.settings.site_name}}}:*")
        await client.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("b_first", [True, False], ids=["b-restored-first", "a-restored-first"])
async def test_same_field_through_cut_links_and_replicas(
    database: tuple[str, str], b_first: bool
) -> None:
    async with deployed(database) as d:
        statuses = {}
        for role in ("a", "b"):  # links cut: relays not listening
            statuses[role] = await d.edit(d.sites[role], {"status": role})
            assert (await d.sites[role].reads.get(Note, d.key))["status"] == role  # its own write
        await d.edit(d.main, {"status": "main"})
        await d.restore(("b", "a") if b_first else ("a", "b"))
        row, log = await d.main_row()
        assert row.status == "main"  # no silent overwrite, whichever link came back first
        assert sorted(r.transaction_id for r in log) == sorted(
            s.transaction_id for s in statuses.values()
        )
        assert all(r.conflict.theirs == {"status": "main"} for r in log)
        for role, site in d.sites.items():
            got = await site.status(statuses[role].transaction_id)
            assert got is not None and got.state is TransactionState.CONFLICTED

            async def shows_truth(site: BufferingCoordinator = site) -> bool:
                row = await site.reads.get(Note, d.key)
                return row is not None and row["status"] == "main"

            await _until(shows_truth, "the site's reads to show the main site's value")


async def test_distinct_fields_all_survive_through_cut_links(database: tuple[str, str]) -> None:
    async with deployed(database) as d:
        await d.edit(d.sites["a"], {"status": "a"})
        await d.edit(d.sites["b"], {"title": "b"})
        await d.edit(d.main, {"meta": {"object": "m33"}})
        await d.restore(("b", "a"))
        row, log = await d.main_row()
        assert (row.status, row.title, row.meta) == ("a", "b", {"object": "m33"})
        assert log == []  # distinct fields do not conflict


async def test_json_merge_keeps_both_sites_keys_through_cut_links(
    database: tuple[str, str],
) -> None:
    async with deployed(database, conflict_policies={"Note.meta": "merge"}) as d:
        await d.edit(d.sites["a"], {"meta": {"object": "m31", "tau": 0.1}})
        b = await d.edit(d.sites["b"], {"meta": {"object": "m31", "seeing": 0.7}})
        await d.edit(d.main, {"status": "main"})
        await d.restore(("a", "b"))
        row, [record] = await d.main_row()
        assert row.meta == {"object": "m31", "tau": 0.1, "seeing": 0.7}
        assert row.status == "main"
        assert record.transaction_id == b.transaction_id
        assert record.conflict.outcome == "merged" and not record.unresolved
        got = await d.sites["b"].status(b.transaction_id)
        assert got is not None and got.state is not TransactionState.CONFLICTED
