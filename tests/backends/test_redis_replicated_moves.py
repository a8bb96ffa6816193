"""The tracker's move to ``replicated`` made in Redis writes what the manager's statuses write.

A write batch with ``replicate`` (``SupportsReplicatedMoves``: the ``replicated``
operation of ``APPLY``, see ``lua/apply_writes.lua``) makes the routine
statuses' move from what Redis stores; one without it is given every new
status and a cache release. Here the same drain and the same tracker polls
go to two sites, one each way, and every key the two leave behind is
compared: type, value, members and scores, and whether and how long it lives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from services import assert_same_sites, site_dump, with_and_without

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.protocols import SupportsReplicatedMoves
from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.confirm.replication import ReplicaState, ReplicationTracker
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.status import made_event
from ccat_buffering_redis import RedisBackend

from support import FakeClock, observation

S = TransactionState


class _Replica:
    """A replica that has replayed up to ``lsn``, or (``everything``) the main database."""

    def __init__(self) -> None:
        self.lsn = LSN(0)
        self.everything = False

    async def poll(self) -> ReplicaState:
        return ReplicaState(replay_lsn=self.lsn, replays_everything=self.everything)


@pytest.fixture
async def pair(redis_client: aioredis.Redis) -> AsyncIterator[tuple[RedisBackend, RedisBackend]]:
    async for sites in with_and_without(redis_client, RedisBackend, "replicate"):
        yield sites


async def test_the_tracker_through_moves_writes_what_it_writes_status_by_status(
    redis_client: aioredis.Redis, pair: tuple[RedisBackend, RedisBackend]
) -> None:
    txs = [observation(i)[0] for i in range(9)]
    dumps = []
    moves_used = []
    for backend in pair:
        clock = FakeClock(1_765_000_000.25)
        manager = TransactionManager(backend, clock=clock)
        replica = _Replica()
        tracker = ReplicationTracker(manager, replica, clock=clock)
        await manager.buffer_many(txs)
        states = []
        # An earlier lease holder committed one: this process reads it back.
        (earlier,) = await manager.claim(1, 30)
        await manager.committed([earlier], LSN(0x3_0000_0800))
        manager.recent_commits.forget([earlier.transaction_id])
        first = await manager.claim(2, 30)
        clock.now += 1.5
        # One is retried and one goes back behind it: both get a history.
        await manager.failed([(first[0], ValueError("boom"), FailureKind.CONFLICT)], first[1:])
        await redis_client.delete(backend.keys.prefix + "hold")
        clock.now += 10
        claimed = await manager.claim(8, 30)
        assert len(claimed) == 8
        clock.now += 0.000_003
        await manager.committed(
            claimed[:5], LSN(0x3_0000_1000), {claimed[2].transaction_id: {"s": {"id": 5}}}
        )
        clock.now += 2
        await manager.committed(claimed[5:7], None)
        await manager.committed(claimed[7:], LSN(0x3_0000_2000))
        states.append(await site_dump(redis_client, backend.keys.prefix, backend.keys.pattern()))
        # The replica shows the first commits only: the rest wait, their caches kept.
        replica.lsn = LSN(0x3_0000_1000)
        clock.now += 0.7
        report = await tracker.poll_once()
        assert (report.confirmed, report.pending) == (6, 3)
        states.append(await site_dump(redis_client, backend.keys.prefix, backend.keys.pattern()))
        replica.everything = True  # and those without a commit LSN
        clock.now += 0.000_011
        async with backend.atomic() as batch:
            moves_used.append(isinstance(batch, SupportsReplicatedMoves))
        assert (await tracker.poll_once()).confirmed == 3
        states.append(await site_dump(redis_client, backend.keys.prefix, backend.keys.pattern()))
        assert await backend.status.ids(S.COMMITTED) == []
        assert len(await backend.status.ids(S.REPLICATED)) == 9
        dumps.append(states)
    assert moves_used == [True, False]
    for moving_state, staging_state in zip(*dumps, strict=True):
        assert_same_sites(moving_state, staging_state)
    # The caches went with the last confirmation, and not before it.
    assert not any(k.startswith("buffered:") for k in dumps[0][-1])
    assert any(k.startswith("buffered:") for k in dumps[0][1])


async def test_a_status_changed_behind_the_tracker_is_moved_from_what_is_stored(
    redis_client: aioredis.Redis, pair: tuple[RedisBackend, RedisBackend]
) -> None:
    """A remembered status that is not the stored one any more is not moved from memory."""
    backend = pair[0]
    clock = FakeClock(1_765_000_000.25)
    manager = TransactionManager(backend, clock=clock)
    replica = _Replica()
    tracker = ReplicationTracker(manager, replica, clock=clock)
    tx = observation(1)[0]
    await manager.buffer_many([tx])
    (delivery,) = await manager.claim(1, 30)
    (committed,) = await manager.committed([delivery], LSN(0x10))
    # Another hand adds a note to the stored status: Redis leaves it to the next poll.
    noted = committed.model_copy(
        update={"history": (made_event(committed.created_at, "noted", "by hand"),)}
    )
    await backend.status.put(noted, 600)
    replica.lsn = LSN(0x10)
    clock.now += 1
    assert (await tracker.poll_once()).confirmed == 1
    clock.now += 1
    await tracker.poll_once()
    status = await backend.status.get(tx.transaction_id)
    assert status is not None and status.state is S.REPLICATED
    assert [e.event for e in status.history] == ["noted", "replicated"]
    assert await backend.status.ids(S.COMMITTED) == []
