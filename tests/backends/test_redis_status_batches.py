"""Statuses staged in batches (``put_statuses``) write what one ``put_status`` each writes.

The drain writes a status per transaction three times (claimed, committed,
replicated); on Redis the routine ones of a batch share one ``statuses``
operation of ``APPLY`` (see ``lua/apply.lua``). Here the same statuses, and
the same drain, go to two sites, one staging them in batches and one a status
at a time, and every key the two leave behind is compared: type, value,
members and scores, and whether and how long it lives.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from services import assert_same_sites, forget_site, site_dump, with_and_without

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.protocols import (
    CacheKind,
    CacheWrite,
    SupportsStatusBatches,
)
from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import TransactionState, TransactionStatus
from ccat_buffering.write.status import made_event
from ccat_buffering_memory import MemoryBackend
from ccat_buffering_redis import RedisBackend

from support import FakeClock, observation

S = TransactionState


@pytest.fixture
async def pair(redis_client: aioredis.Redis) -> AsyncIterator[tuple[RedisBackend, RedisBackend]]:
    async for sites in with_and_without(redis_client, RedisBackend, "put_statuses"):
        yield sites


async def _dump(client: aioredis.Redis, backend: RedisBackend) -> dict[str, Any]:
    return await site_dump(client, backend.keys.prefix, backend.keys.pattern())


def _status(txid: str, state: TransactionState, **changes: Any) -> TransactionStatus:
    created = dt.datetime(2026, 12, 1, 8, 0, 0, 123456, tzinfo=dt.UTC)
    values = {"endpoint": "record_scan", "updated_at": created + dt.timedelta(seconds=1)}
    return TransactionStatus(
        transaction_id=txid, state=state, created_at=created, **{**values, **changes}
    )


def _stages() -> list[list[TransactionStatus]]:
    """Batches of statuses of every shape: routine runs broken by unusual ones."""
    at = dt.datetime(2026, 12, 1, 8, 0, 5, tzinfo=dt.UTC)
    later = at + dt.timedelta(seconds=3, microseconds=7)
    ids = [f"tx-{i}" for i in range(8)]
    event = made_event(at, "retrying", "boom")
    return [
        [_status(t, S.BUFFERED) for t in ids],
        [
            _status(ids[0], S.PROCESSING, updated_at=at),
            _status(ids[1], S.PROCESSING, updated_at=at),
            _status(ids[2], S.PROCESSING, updated_at=at, endpoint="other"),
            _status(ids[3], S.PROCESSING, updated_at=at, attempts=2),
            _status(ids[4], S.RETRYING, attempts=1, last_error="boom", history=(event,)),
            _status(ids[5], S.PROCESSING, updated_at=at),
            # One transaction twice in a batch: the last one staged wins.
            _status(ids[6], S.PROCESSING, updated_at=at),
            _status(ids[6], S.BUFFERED, updated_at=later),
            _status(ids[7], S.PROCESSING, updated_at=at),
        ],
        [
            _status(t, S.COMMITTED, commit_lsn=lsn, committed_at=at, updated_at=at, **extra)
            for t, lsn, extra in [
                (ids[0], LSN(0x2_0000_00AB), {}),
                (ids[1], LSN(0x2_0000_00AB), {}),
                (ids[2], LSN(0x2_0000_00AB), {"endpoint": "other"}),
                (ids[3], None, {}),
                (ids[5], LSN(0x1A), {"generated": {"s1": {"id": 7}}}),
                (ids[7], LSN(0x2_0000_00AB), {}),
            ]
        ],
        [
            _status(
                ids[0],
                S.REPLICATED,
                commit_lsn=LSN(0x2_0000_00AB),
                committed_at=at,
                replicated_at=later,
                updated_at=later,
            ),
            _status(
                ids[1],
                S.REPLICATED,
                commit_lsn=LSN(0x2_0000_00AB),
                committed_at=at,
                replicated_at=later,
                updated_at=later,
            ),
            _status(ids[4], S.FAILED, attempts=3, last_error="boom", history=(event,)),
            _status(
                ids[3], S.REPLICATED, committed_at=later, replicated_at=later, updated_at=later
            ),
        ],
    ]


async def test_put_statuses_writes_what_put_status_writes_for_each(
    redis_client: aioredis.Redis, pair: tuple[RedisBackend, RedisBackend]
) -> None:
    batched, single = pair
    for backend in pair:
        async with backend.atomic() as batch:
            # Records the transactions wrote: their statuses keep them.
            batch.write_cache(
                "tx-0", [CacheWrite("Obs", "r1", CacheKind.CREATE, {"name": "a"})], 60
            )
    for statuses in _stages():
        async with batched.atomic() as batch:
            assert isinstance(batch, SupportsStatusBatches)
            batch.put_statuses(statuses, 600)
        async with single.atomic() as batch:
            for status in statuses:
                batch.put_status(status, 600)
        assert_same_sites(await _dump(redis_client, batched), await _dump(redis_client, single))
    # It wrote what it should, read back as it was staged.
    assert await batched.status.get("tx-6") == _stages()[1][7]
    assert await batched.status.get("tx-0") == _stages()[3][0]
    assert await batched.status.ids(S.COMMITTED) == ["tx-5", "tx-2", "tx-7"]


async def test_routine_statuses_share_one_operation() -> None:
    from ccat_buffering_redis._frame import statuses_commands

    stages = _stages()
    assert [c.text.split("\x1f")[0] for c in statuses_commands(stages[0], 60)] == ["statuses"]
    names = [c.text.split("\x1f")[0] for c in statuses_commands(stages[1], 60)]
    # tx-0,1 | tx-2 (endpoint) | tx-3 (attempts) | tx-4 (history) | tx-5,6 | tx-6 buffered | tx-7
    assert names == ["statuses"] * 3 + ["status"] + ["statuses"] * 3


async def test_a_drain_through_batches_writes_what_a_drain_status_by_status_writes(
    redis_client: aioredis.Redis, pair: tuple[RedisBackend, RedisBackend]
) -> None:
    txs = [observation(i)[0] for i in range(6)]
    dumps = []
    for backend in pair:
        manager = TransactionManager(backend, clock=FakeClock(1_765_000_000.25))
        clock = manager.clock
        assert isinstance(clock, FakeClock)
        await manager.buffer_many(txs)
        states = []
        first = await manager.claim(2, 30)
        clock.now += 1.5
        # One is retried and one goes back behind it (both get a history);
        # the other four stay routine.
        await manager.failed([(first[0], ValueError("boom"), FailureKind.CONFLICT)], first[1:])
        await redis_client.delete(backend.keys.prefix + "hold")
        clock.now += 10
        claimed = await manager.claim(6, 30)
        assert len(claimed) == 6
        clock.now += 0.000_003
        committed = await manager.committed(
            claimed[:5], LSN(0x3_0000_1000), {claimed[2].transaction_id: {"s": {"id": 5}}}
        )
        clock.now += 2
        await manager.committed(claimed[5:], None)
        states.append(await _dump(redis_client, backend))
        clock.now += 0.7
        await manager.replicated(committed)
        states.append(await _dump(redis_client, backend))
        dumps.append(states)
    for batched_state, single_state in zip(*dumps, strict=True):
        assert_same_sites(batched_state, single_state)
    assert any(k.startswith("state:replicated") for k in dumps[0][-1])


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_bad_status_in_a_batch_stages_none_of_it(
    kind: str, redis_client: aioredis.Redis
) -> None:
    backend: Any = (
        MemoryBackend(site=new_site_name())
        if kind == "memory"
        else RedisBackend(redis_client, site=new_site_name())
    )
    good = _status("tx-1", S.PROCESSING)
    bad = _status("tx-2", S.PROCESSING).model_copy(update={"transaction_id": "bad id"})
    try:
        async with backend.atomic() as batch:
            with pytest.raises(Exception, match="bad id"):
                batch.put_statuses([good, bad], 60)
            with pytest.raises(ValueError, match="ttl_seconds"):
                batch.put_statuses([good], math.nan)
        assert await backend.status.get("tx-1") is None
        async with backend.atomic() as batch:
            batch.put_statuses([good, good.model_copy(update={"state": S.COMMITTED})], 60)
        stored = await backend.status.get("tx-1")
        assert stored is not None and stored.state is S.COMMITTED
    finally:
        if kind == "redis":
            await forget_site(redis_client, backend.keys.pattern())


async def test_memory_put_statuses_is_put_status_of_each() -> None:
    stages = _stages()
    batched, single = MemoryBackend(site="a"), MemoryBackend(site="b")
    for statuses in stages:
        async with batched.atomic() as batch:
            assert isinstance(batch, SupportsStatusBatches)
            batch.put_statuses(statuses, 600)
        async with single.atomic() as batch:
            for status in statuses:
                batch.put_status(status, 600)
    for state in S:
        assert await batched.status.ids(state) == await single.status.ids(state)
    ids = sorted({s.transaction_id for stage in stages for s in stage})
    assert await batched.status.get_many(ids) == await single.status.get_many(ids)


@pytest.mark.parametrize("count", ["3", "-1", "1.5", "999999999", "x"])
async def test_a_malformed_statuses_operation_is_refused_whole(
    redis_client: aioredis.Redis, pair: tuple[RedisBackend, RedisBackend], count: str
) -> None:
    from ccat_buffering_redis import scripts
    from ccat_buffering_redis._frame import Command, frame

    backend = pair[0]
    library = scripts.LIBRARIES["apply"]
    parts = ["statuses", "processing", "60000", "", "", '{"state":"processing"}', count]
    parts += ["tx-1", "1765000000000000,5", ""]
    op = Command("\x1f".join(parts), len(parts) - 1)
    await redis_client.execute_command("FUNCTION", "LOAD", "REPLACE", library.code)
    args = [backend.keys.prefix, *frame([[op]])]
    reply = await redis_client.fcall(library.function, 1, backend.keys.buffer, *args)
    assert [r.decode() for r in reply] == ["error: operation statuses is unknown or malformed"]
    assert await backend.status.get("tx-1") is None


async def test_acks_staged_together_do_what_one_ack_each_does(
    redis_client: aioredis.Redis, pair: tuple[RedisBackend, RedisBackend]
) -> None:
    """Acks staged one after another go as one ``acks`` operation, with the same effect."""
    from ccat_buffering_redis._frame import command
    from ccat_buffering_redis._writes import RedisWriteBatch

    replies = []
    for n, backend in enumerate(pair):
        async with backend.atomic() as batch:
            for i in range(5):
                batch.push(f"entry {i}")
        claims = await backend.buffer.claim(4, 30)
        receipts = [c.receipt for c in claims]
        # A receipt twice, one unknown; the last claim stays in flight.
        staged = [receipts[0], receipts[1], receipts[0], "999999", receipts[2]]
        if n == 0:
            staging = RedisWriteBatch()
            for receipt in staged:
                staging.ack(receipt)
            ops = staging.ops
            assert [op.text.split("\x1f")[0] for op in ops] == ["acks"]
        else:
            ops = [command("ack", blobs=(r,)) for r in staged]
        replies.append(await backend._apply_groups([ops]))
    assert_same_sites(await _dump(redis_client, pair[0]), await _dump(redis_client, pair[1]))
    assert replies == [[3], [3]]
    assert (await pair[0].buffer.stats()).in_flight == 1
