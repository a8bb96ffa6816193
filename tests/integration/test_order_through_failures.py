"""Order holds through failures, and schema drift pauses the queue (PostgreSQL, both paths).

psycopg takes the pipelined path, asyncpg the session path. The order in
which transactions were committed is read from a sequence the test adds to
the ledger: one processor writes, so the order of the ledger's rows is the
order of the commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pg import fresh_database
from sqlalchemy import text
from sqlalchemy.engine import make_url

from ccat_buffering.demo.example import ExecutedObsUnit
from ccat_buffering.drain._link import LinkTimeouts
from ccat_buffering.drain.database import LEDGER_TABLE_NAME, create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import ProcessorState
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction, TransactionState

from support import Site, build_site, observation, orphan_package

SIZE = 1000
VICTIM = 500
# Past the longest retry hold of the first attempts (5 s, then 10 s), within the
# lease (15 s) and far within the caches' TTL.
HOLD = 11.0

# How a constraint refuses the victim, and how an operator fixes it after its first failure.
CONSTRAINTS = {
    "immediate": (
        "ALTER TABLE executed_obs_unit ADD CONSTRAINT refuse_500 CHECK (obs_unit_id <> 500)",
        "ALTER TABLE executed_obs_unit DROP CONSTRAINT refuse_500",
    ),
    "deferred": (
        "ALTER TABLE raw_data_package ALTER CONSTRAINT "
        "raw_data_package_executed_obs_unit_id_fkey DEFERRABLE INITIALLY DEFERRED",
        "INSERT INTO executed_obs_unit (id, obs_unit_id, status, start_time) "
        "VALUES ('missing-500', 500, 'fixed', now())",
    ),
}


@pytest_asyncio.fixture(params=["psycopg", "asyncpg"])
async def site(request: pytest.FixtureRequest) -> AsyncIterator[Site]:
    async with fresh_database() as url:
        driver_url = (
            make_url(url)
            .set(drivername=f"postgresql+{request.param}")
            .render_as_string(hide_password=False)
        )
        built = await build_site(driver_url, seed=3)
        assert built.engine.dialect.driver == request.param
        async with built.engine.begin() as conn:
            await conn.execute(
                text(f"ALTER TABLE {LEDGER_TABLE_NAME} ADD COLUMN commit_order bigserial")
            )
        try:
            yield built
        finally:
            await built.engine.dispose()


async def _sql(site: Site, statement: str) -> None:
    async with site.engine.begin() as conn:
        await conn.execute(text(statement))


async def _commit_order(site: Site) -> list[str]:
    async with site.engine.connect() as conn:
        rows = await conn.execute(
            text(f"SELECT transaction_id FROM {LEDGER_TABLE_NAME} ORDER BY commit_order")
        )
        return [row[0] for row in rows]


async def _drain(site: Site, cycles: int = 50) -> None:
    """Cycles until the buffer is empty, moving the fake clock past every hold."""
    for _ in range(cycles):
        stats = await site.backend.buffer.stats()
        if stats.depth == 0 and stats.in_flight == 0:
            return
        site.clock.advance(HOLD)
        await site.processor.run_once()
    raise AssertionError(f"not drained after {cycles} cycles: {await site.backend.buffer.stats()}")


@pytest.mark.parametrize("constraint", CONSTRAINTS)
async def test_a_transaction_failing_mid_batch_commits_in_buffer_order(
    site: Site, constraint: str
) -> None:
    refuse, fix = CONSTRAINTS[constraint]
    await _sql(site, refuse)
    txs = [observation(i)[0] for i in range(SIZE)]
    if constraint == "deferred":
        txs[VICTIM] = orphan_package(VICTIM)
    victim = txs[VICTIM].transaction_id
    await site.manager.buffer_many(txs)
    site.processor.batch_size = SIZE

    # One batch of 1,000: what precedes the victim commits, nothing after it.
    assert await site.processor.run_once() == VICTIM
    status = await site.manager.status(victim)
    assert status is not None and status.state is TransactionState.RETRYING
    assert status.attempts == 1
    assert await _commit_order(site) == [t.transaction_id for t in txs[:VICTIM]]
    assert await site.processor.run_once() == 0  # the head is held for the victim's backoff

    await _sql(site, fix)  # fixed after its first failure
    await _drain(site)
    assert await _commit_order(site) == [t.transaction_id for t in txs]
    statuses = await site.backend.status.get_many([t.transaction_id for t in txs])
    assert all(s is not None and s.state is TransactionState.COMMITTED for s in statuses)
    assert statuses[VICTIM] is not None and statuses[VICTIM].attempts == 1
    assert (await site.backend.buffer.stats()).dead_letters == 0


def _unit_only(i: int) -> Transaction:
    tx = TransactionBuilder("unit_only")
    tx.create(
        ExecutedObsUnit,
        {
            "id": f"unit-only-{i}",
            "obs_unit_id": 10_000 + i,
            "status": "running",
            "start_time": dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
        },
    )
    return tx.build()


async def test_a_not_null_column_added_while_buffered_pauses_until_it_has_a_default(
    site: Site,
) -> None:
    first = [_unit_only(i) for i in range(5)]  # they never touch the drifted table
    buffered = [observation(i) for i in range(50)]
    txs = [*first, *(tx for tx, _ in buffered)]
    await site.manager.buffer_many(txs)
    # The main database's schema moves under the buffer: a NOT NULL column
    # without a default that the mapping does not know (the table has rows, so
    # it takes a default first and then loses it).
    await _sql(site, "INSERT INTO executed_obs_unit VALUES ('old', 1, 'x', now())")
    await _sql(
        site,
        "INSERT INTO raw_data_package (id, executed_obs_unit_id, name) "
        "VALUES ('old', 'old', 'old')",
    )
    await _sql(site, "ALTER TABLE raw_data_package ADD COLUMN shipped_by text NOT NULL DEFAULT 'x'")
    await _sql(site, "ALTER TABLE raw_data_package ALTER COLUMN shipped_by DROP DEFAULT")

    # The queue pauses at the first transaction the schema refuses, naming the column.
    assert await site.processor.run_once() == 5
    for _ in range(5):  # more cycles than max_attempts, each past any retry hold
        site.clock.advance(HOLD)
        assert await site.processor.run_once() == 0
    health = await site.processor.health()
    assert health.state is ProcessorState.PAUSED
    assert health.cause is not None and "raw_data_package.shipped_by" in health.cause
    assert "schema drift" in health.cause
    assert health.dead_letters == 0 and health.retried == 0
    statuses = await site.backend.status.get_many([t.transaction_id for t in txs[5:]])
    assert all(
        s is not None and s.state is TransactionState.BUFFERED and s.attempts == 0 for s in statuses
    )
    # The site still sees every buffered write.
    for _, obs_id in buffered:
        assert await site.manager.cached_record("ExecutedObsUnit", obs_id) is not None

    await _sql(site, "ALTER TABLE raw_data_package ALTER COLUMN shipped_by SET DEFAULT 'main'")
    assert await site.processor.run_once() == 50
    assert (await site.processor.health()).state is ProcessorState.RUNNING
    assert await _commit_order(site) == [t.transaction_id for t in txs]
    statuses = await site.backend.status.get_many([t.transaction_id for t in txs])
    assert all(s is not None and s.state is TransactionState.COMMITTED for s in statuses)
    assert (await site.backend.buffer.stats()).dead_letters == 0


async def test_a_row_locked_by_a_stalled_session_holds_what_follows(site: Site) -> None:
    """A lock that does not come in time (55P03, as behind a hung worker) is retried first."""
    engine = create_engine(site.url, timeouts=LinkTimeouts(lock=0.3))
    site.processor.executor = TransactionExecutor(engine, site.registry)
    try:
        first, held = observation(0)
        await site.manager.buffer(first)
        assert await site.processor.run_once() == 1
        change = TransactionBuilder("finish")
        change.update(ExecutedObsUnit, {"id": held}, {"status": "done"})
        txs = [
            *(observation(i)[0] for i in range(1, 5)),
            change.build(),
            *(observation(i)[0] for i in range(5, 10)),
        ]
        await site.manager.buffer_many(txs)
        async with site.engine.connect() as stalled:
            await stalled.execute(
                text("SELECT 1 FROM executed_obs_unit WHERE id = :id FOR UPDATE"), {"id": held}
            )
            assert await site.processor.run_once() == 4
            status = await site.manager.status(txs[4].transaction_id)
            assert status is not None and status.state is TransactionState.RETRYING
            assert status.attempts == 0  # a conflict, not the data's fault
            site.clock.advance(1)
            assert await site.processor.run_once() == 0  # still locked: nothing after it
            await stalled.rollback()
        await _drain(site)
        assert await _commit_order(site) == [first.transaction_id, *(t.transaction_id for t in txs)]
    finally:
        await engine.dispose()


async def test_a_conflicted_transaction_leaves_the_batch_without_holding_it(site: Site) -> None:
    """A conflict is not a retried failure: the prefix goes on past it, up to a real failure."""
    first, held = observation(0)
    await site.manager.buffer(first)
    assert await site.processor.run_once() == 1
    await _sql(site, f"UPDATE executed_obs_unit SET status = 'theirs' WHERE id = '{held}'")
    stale = TransactionBuilder("finish")
    stale.update(ExecutedObsUnit, {"id": held}, {"status": "mine"}, expected={"status": "running"})
    txs = [
        *(observation(i)[0] for i in range(1, 5)),
        stale.build(),
        *(observation(i)[0] for i in range(5, 10)),
    ]
    victim = txs[7]  # obs_unit_id 7
    await _sql(
        site, "ALTER TABLE executed_obs_unit ADD CONSTRAINT refuse_7 CHECK (obs_unit_id <> 7)"
    )
    await site.manager.buffer_many(txs)
    site.processor.batch_size = len(txs)

    # Applied: 1-4 and 5-6, past the conflicted one; 7 fails and holds 8-9.
    assert await site.processor.run_once() == 6
    ids = [t.transaction_id for t in txs]
    assert await _commit_order(site) == [first.transaction_id, *ids[:4], *ids[5:7]]
    conflicted = await site.manager.status(ids[4])
    assert conflicted is not None and conflicted.state is TransactionState.CONFLICTED
    assert conflicted.last_error is not None and "update_origin_differs" in conflicted.last_error
    failed = await site.manager.status(victim.transaction_id)
    assert failed is not None and failed.state is TransactionState.RETRYING
    for later in ids[8:]:
        status = await site.manager.status(later)
        assert status is not None and status.state is TransactionState.BUFFERED

    await _sql(site, "ALTER TABLE executed_obs_unit DROP CONSTRAINT refuse_7")
    await _drain(site)
    assert await _commit_order(site) == [first.transaction_id, *ids[:4], *ids[5:]]
    conflicted = await site.manager.status(ids[4])
    assert conflicted is not None and conflicted.state is TransactionState.CONFLICTED
    async with site.engine.connect() as conn:
        status = (
            await conn.execute(text(f"SELECT status FROM executed_obs_unit WHERE id = '{held}'"))
        ).scalar()
    assert status == "theirs"  # never silently overwritten
    assert (await site.backend.buffer.stats()).dead_letters == 0
