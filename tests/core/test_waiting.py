"""Waiting for a transaction: site.wait, follow, and the shared poller's cost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from ccat_buffering import BufferingCoordinator, BufferingSettings
from ccat_buffering.confirm.waiting import SLICE, StatusWatch
from ccat_buffering.demo.example import Base
from ccat_buffering.errors import (
    TransactionFailedError,
    UnknownTransactionError,
    WaitTimeoutError,
)
from ccat_buffering.write.models import TransactionState, TransactionStatus
from ccat_buffering.write.registry import ModelRegistry

from support import make_schema, observation, orphan_package


@pytest_asyncio.fixture
async def site(tmp_path: Path) -> AsyncIterator[BufferingCoordinator]:
    settings = BufferingSettings(
        site_name="cerro",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'main.db'}",
        poll_interval=0.01,
        replication_poll_interval=0.01,
        wait_poll_interval=0.01,
        max_attempts=1,
    )
    registry = ModelRegistry.from_base(Base)
    async with BufferingCoordinator.from_settings(settings, registry=registry, start=False) as s:
        await make_schema(s.engine)
        await s.prepare_database()
        yield s


async def test_wait_returns_at_committed_and_at_replicated(site: BufferingCoordinator) -> None:
    tx, _ = observation(1)
    status = await site.submit(tx)
    waits = [
        asyncio.create_task(site.wait(status.transaction_id, until=until, timeout=20))
        for until in ("committed", "replicated")
    ]
    await asyncio.sleep(0)
    assert site.activity.waiting == 2
    site.start()
    committed, replicated = await asyncio.gather(*waits)
    assert committed.state in (TransactionState.COMMITTED, TransactionState.REPLICATED)
    assert replicated.state is TransactionState.REPLICATED
    assert site.activity.waiting == 0 and site.activity.waits["replicated"] >= 1


async def test_a_wait_times_out_with_the_last_known_state(site: BufferingCoordinator) -> None:
    tx, _ = observation(1)
    status = await site.submit(tx)  # nothing drains: an outage, as far as the wait knows
    with pytest.raises(WaitTimeoutError, match=r"not replicated within 0\.1 s") as caught:
        await site.wait(status.transaction_id, until="replicated", timeout=0.1)
    assert caught.value.status is not None
    assert caught.value.status.state is TransactionState.BUFFERED
    assert isinstance(caught.value, TimeoutError)
    assert site.activity.waits["timeout"] == 1 and site.statuses.waiting == 0


async def test_a_dead_lettered_transaction_ends_the_wait(site: BufferingCoordinator) -> None:
    status = await site.submit(orphan_package(1))  # a foreign key to nothing
    site.start()
    with pytest.raises(TransactionFailedError) as caught:
        await site.wait(status.transaction_id, until="replicated", timeout=20)
    assert caught.value.status is not None
    assert caught.value.status.state is TransactionState.FAILED


async def test_an_unknown_transaction_is_said_at_once(site: BufferingCoordinator) -> None:
    with pytest.raises(UnknownTransactionError, match="never submitted"):
        await site.wait("no-such-transaction", timeout=10)


async def test_follow_yields_each_change_of_state(site: BufferingCoordinator) -> None:
    tx, _ = observation(1)
    status = await site.submit(tx)
    seen: list[TransactionState] = []

    async def follow() -> None:
        async for change in site.statuses.follow(status.transaction_id, timeout=20):
            seen.append(change.state)

    task = asyncio.create_task(follow())
    while not seen:
        await asyncio.sleep(0.005)
    site.start()
    await task
    assert seen[0] is TransactionState.BUFFERED and seen[-1] is TransactionState.REPLICATED
    assert len(seen) == len(set(seen))  # once per change


class CountingStore:
    """A status store that counts the calls of the shared poller."""

    def __init__(self, statuses: dict[str, TransactionStatus]) -> None:
        self.statuses = statuses
        self.get_many_calls = 0
        self.get_calls = 0

    async def get(self, transaction_id: str) -> TransactionStatus | None:
        self.get_calls += 1
        return self.statuses.get(transaction_id)

    async def get_many(self, ids: Sequence[str]) -> list[TransactionStatus | None]:
        self.get_many_calls += 1
        return [self.statuses.get(i) for i in ids]


async def test_a_thousand_and_more_waiters_share_one_read_per_slice(
    site: BufferingCoordinator,
) -> None:
    n = SLICE + 500
    statuses = {}
    for i in range(n):
        tx, _ = observation(i)
        status = await site.manager.buffer(tx)
        statuses[status.transaction_id] = status
    store = CountingStore(statuses)
    watch = StatusWatch(store, interval=0.05)  # type: ignore[arg-type]
    waits = [asyncio.create_task(watch.wait(i, "committed", timeout=10)) for i in statuses]
    while watch.waiting < n:
        await asyncio.sleep(0.01)
    # Until it has read at least ten slices (a deadline, not a sleep: a full
    # garbage collection late in a long run can hold the loop for a while).
    before, began = store.get_many_calls, time.monotonic()
    deadline = began + 10
    while (reads := store.get_many_calls - before) < 10:
        assert time.monotonic() < deadline, f"{reads} reads in 10 s"
        await asyncio.sleep(0.01)
    intervals = (time.monotonic() - began) / 0.05
    # Two slices per poll, one poll per interval: never one read per waiter.
    assert reads <= 2 * (intervals + 2), (reads, intervals)
    assert store.get_calls == 0  # the waits that began together shared their first read
    committed = {
        i: s.model_copy(update={"state": TransactionState.COMMITTED}) for i, s in statuses.items()
    }
    store.statuses = committed
    done = await asyncio.gather(*waits)
    assert {s.state for s in done} == {TransactionState.COMMITTED}
    assert watch.waiting == 0
    await watch.aclose()
