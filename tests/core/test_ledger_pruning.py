"""The ledger's life: the site in each row, the upgrade, pruning past a safe horizon.

Nothing is applied twice after a prune: not on a redelivery after a lost
acknowledgement, not on a replay, not from a buffer restored from an older
backup; and pruning beside a drain does not hold it up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from pg import fresh_database
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.demo.example import ExecutedObsUnit
from ccat_buffering.drain.database import create_engine, create_ledger, ledger_table
from ccat_buffering.drain.ledger_pruning import (
    SKEW,
    horizons_table,
    prune_ledger,
    prune_site,
    recorded_horizon,
)
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.write.models import Transaction, TransactionState, utc_now

from support import Site, example_site, ledger_count, observation, sqlite_url

DAY = 24 * 3600.0


@pytest_asyncio.fixture(params=["sqlite", "asyncpg", "psycopg"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """SQLite (session path), asyncpg (session path), psycopg (pipelined path)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    async with fresh_database() as base:
        driver = f"postgresql+{request.param}"
        yield make_url(base).set(drivername=driver).render_as_string(hide_password=False)


def aged(tx: Transaction, days: float) -> Transaction:
    """``tx`` as if it had been created ``days`` ago."""
    return tx.model_copy(update={"created_at": utc_now() - dt.timedelta(days=days)})


async def settle(site: Site) -> None:
    """Run batches until nothing waits or is in flight (bounded)."""
    for _ in range(200):
        stats = await site.backend.buffer.stats()
        if stats.depth == 0 and stats.in_flight == 0:
            return
        await site.processor.run_once()
    raise AssertionError("the buffer did not settle")


async def dead_letter(site: Site, tx: Transaction) -> None:
    """Buffer ``tx`` and park it as a dead letter, as a failed drain would."""
    await site.manager.buffer(tx)
    (claim,) = await site.backend.buffer.claim(1, 60)
    assert await site.backend.buffer.dead_letter(claim.receipt, "injected", tx.transaction_id)
    status = await site.manager.status(tx.transaction_id)
    assert status is not None
    await site.backend.status.put(status.advance(TransactionState.FAILED), 3600)


async def units(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).select_from(ExecutedObsUnit)
        return int((await conn.execute(query)).scalar_one())


async def prune(site: Site, *, dry_run: bool = False, retention: float = DAY) -> int:
    report = await prune_site(
        site.engine, site.backend, retention=retention, batch_size=3, dry_run=dry_run
    )
    return report.rows


async def test_each_row_names_its_site_and_creation(url: str) -> None:
    async with example_site(url, ledger_retention=DAY) as site:
        txs = [observation(i)[0] for i in range(4)]
        await site.manager.buffer_many(txs)
        await settle(site)
        async with site.engine.connect() as conn:
            rows = (await conn.execute(select(ledger_table))).mappings().all()
        assert {r["transaction_id"] for r in rows} == {tx.transaction_id for tx in txs}
        assert {r["site"] for r in rows} == {site.backend.site}
        created = {tx.transaction_id: tx.created_at for tx in txs}
        for row in rows:
            stored = row["created_at"]
            stored = stored if stored.tzinfo else stored.replace(tzinfo=dt.UTC)
            assert stored == created[row["transaction_id"]]


async def test_create_ledger_upgrades_an_old_ledger_and_keeps_its_rows(tmp_path: Path) -> None:
    engine = create_engine(sqlite_url(tmp_path))
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE ccat_buffering_applied_transactions (transaction_id "
                    "VARCHAR(36) PRIMARY KEY, endpoint VARCHAR(128) NOT NULL, "
                    "applied_at DATETIME NOT NULL)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO ccat_buffering_applied_transactions "
                    "VALUES ('old-1', 'e', '2020-01-01 00:00:00')"
                )
            )
        await create_ledger(engine)
        await create_ledger(engine)  # again: nothing to do

        def shape(sync_conn: object) -> tuple[set[str], set[str]]:
            inspector = inspect(sync_conn)
            columns = {c["name"] for c in inspector.get_columns(ledger_table.name)}
            indexes = {i["name"] or "" for i in inspector.get_indexes(ledger_table.name)}
            return columns, indexes

        async with engine.connect() as conn:
            columns, indexes = await conn.run_sync(shape)
            old = (await conn.execute(select(ledger_table))).mappings().one()
        assert {"site", "created_at"} <= columns
        assert "ix_ccat_buffering_applied_site_created" in indexes
        assert (old["transaction_id"], old["site"], old["created_at"]) == ("old-1", None, None)
        # A row without a site is never pruned by a site.
        report = await prune_ledger(engine, "anywhere", utc_now())
        assert report.rows == 0 and await ledger_count(engine) == 1
    finally:
        await engine.dispose()


async def test_prune_keeps_what_the_site_holds_and_drops_the_rest(url: str) -> None:
    async with example_site(url, max_attempts=1, ledger_retention=DAY) as site:
        older = [aged(observation(i)[0], 4) for i in range(5)]
        await site.manager.buffer_many(older)
        await settle(site)
        # A dead letter created three days ago holds the horizon behind it.
        letter = aged(observation(100)[0], 3)
        await dead_letter(site, letter)
        newer = [aged(observation(i)[0], 2) for i in range(10, 15)]
        await site.manager.buffer_many(newer)
        await settle(site)
        async with site.engine.begin() as conn:  # another site's old row
            await conn.execute(
                ledger_table.insert().values(
                    transaction_id="other-1",
                    endpoint="e",
                    applied_at=utc_now(),
                    site="elsewhere",
                    created_at=utc_now() - dt.timedelta(days=30),
                )
            )
        assert await prune(site, dry_run=True) == 5
        assert await ledger_count(site.engine) == 11
        async with site.engine.connect() as conn:
            assert await recorded_horizon(conn, site.backend.site) is None

        assert await prune(site) == 5
        async with site.engine.connect() as conn:
            kept = set((await conn.execute(select(ledger_table.c.transaction_id))).scalars())
            horizon = await recorded_horizon(conn, site.backend.site)
        assert kept == {tx.transaction_id for tx in newer} | {"other-1"}
        assert horizon is not None
        assert abs((horizon - (letter.created_at - SKEW)).total_seconds()) < 1

        # Once the letter is gone, the retention floor is the horizon.
        await site.backend.dead_letters.purge([letter.transaction_id])
        assert await prune(site) == 5
        assert await ledger_count(site.engine) == 1
        # The horizon never moves back, whatever retention a later run uses.
        await prune(site, retention=10 * DAY)
        async with site.engine.connect() as conn:
            later = await recorded_horizon(conn, site.backend.site)
            total = (await conn.execute(select(horizons_table.c.rows_pruned))).scalar_one()
        assert later is not None and later > horizon and total == 10


async def test_redelivery_after_a_lost_ack_after_a_prune_applies_nothing_twice(url: str) -> None:
    async with example_site(url, ledger_retention=DAY) as site:
        tx = aged(observation(1)[0], 3)
        await site.manager.buffer(tx)

        async def lost(*args: object, **kwargs: object) -> list[object]:
            raise ConnectionError("injected: the acknowledgement never reached the buffer")

        original = site.manager.committed
        site.manager.committed = lost  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await site.processor.run_once()
        site.manager.committed = original  # type: ignore[method-assign]
        assert await prune(site) == 0  # still in flight: its row stays
        other = BackgroundProcessor(site.manager, site.executor, clock=site.clock)
        site.clock.advance(site.processor.lease_ttl + 1)
        assert await other.run_once() == 1
        assert await units(site.engine) == 1
        status = await site.manager.status(tx.transaction_id)
        assert status is not None and status.state is TransactionState.COMMITTED
        assert await site.backend.dead_letters.list() == []
        assert await prune(site) == 1  # settled now: the row may go


async def test_a_replay_after_a_prune_applies_once(url: str) -> None:
    async with example_site(url, ledger_retention=DAY) as site:
        tx = aged(observation(1)[0], 3)
        await dead_letter(site, tx)
        filler = [aged(observation(i)[0], 5) for i in range(10, 13)]
        await site.manager.buffer_many(filler)
        await settle(site)
        assert await prune(site) == 3  # older than the letter: gone; nothing else
        assert await site.manager.replay([tx.transaction_id]) == [tx.transaction_id]
        await settle(site)
        assert await units(site.engine) == 4
        # The same letter again (an operator's second replay from a copy): a no-op.
        await site.backend.buffer.push([tx.to_json()])
        await settle(site)
        assert await units(site.engine) == 4
        assert await site.backend.dead_letters.list() == []


async def test_a_restored_older_buffer_applies_nothing_twice(url: str) -> None:
    async with example_site(url, ledger_retention=DAY) as site:
        old = [aged(observation(i)[0], 3) for i in range(4)]
        young = [observation(i)[0] for i in range(10, 14)]
        await site.manager.buffer_many(old + young)
        backup = [tx.to_json() for tx in old + young]  # the buffer as a backup saw it
        await settle(site)
        assert await prune(site) == 4
        await site.backend.buffer.push(backup)  # restored
        await settle(site)
        assert await units(site.engine) == 8
        letters = await site.backend.dead_letters.list()
        assert {letter.letter_id for letter in letters} == {tx.transaction_id for tx in old}
        assert all("ledger" in letter.reason and "pruned" in letter.reason for letter in letters)
        for tx in young:
            status = await site.manager.status(tx.transaction_id)
            assert status is not None and status.state is TransactionState.COMMITTED


async def test_pruning_beside_a_drain_does_not_block_it() -> None:
    async with fresh_database() as base:
        url = make_url(base).set(drivername="postgresql+psycopg")
        async with example_site(url.render_as_string(hide_password=False)) as site:
            name = site.backend.site
            async with site.engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO ccat_buffering_applied_transactions "
                        "SELECT 'old-' || g, 'e', now(), :site, now() - interval '30 days' "
                        "FROM generate_series(1, 20000) AS g"
                    ).bindparams(site=name)
                )
            # A prune's batch held open (locks on old rows) while the drain runs.
            holder = await site.engine.connect()
            await holder.begin()
            await holder.execute(
                text(
                    "DELETE FROM ccat_buffering_applied_transactions WHERE transaction_id "
                    "IN (SELECT transaction_id FROM ccat_buffering_applied_transactions "
                    "WHERE site = :site LIMIT 5000)"
                ).bindparams(site=name)
            )
            try:
                await site.manager.buffer_many([observation(i)[0] for i in range(50)])
                await asyncio.wait_for(settle(site), timeout=20)
                # And a second prune skips the locked rows instead of waiting for them.
                horizon = utc_now() - dt.timedelta(days=1)
                report = await asyncio.wait_for(
                    prune_ledger(site.engine, name, horizon, batch_size=1000), timeout=20
                )
                assert report.rows == 15000
            finally:
                await holder.rollback()
                await holder.close()
            # A prune and a drain at once: both finish, everything applied once.
            await site.manager.buffer_many([observation(i)[0] for i in range(50, 350)])
            pruning = asyncio.create_task(prune_ledger(site.engine, name, horizon, batch_size=500))
            await asyncio.wait_for(settle(site), timeout=60)
            report = await asyncio.wait_for(pruning, timeout=60)
            assert report.rows == 5000
            assert await units(site.engine) == 350
            assert await ledger_count(site.engine) == 350
