"""The Redis layout of issue 12: learned field index, index buckets, state buckets, zlib entries."""

from __future__ import annotations

import asyncio
import datetime as dt
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from services import forget_site

from ccat_buffering.manager import TransactionManager
from ccat_buffering.models import TransactionState, TransactionStatus
from ccat_buffering.protocols import CacheKind, CacheWrite
from ccat_buffering.testing import new_site_name
from ccat_buffering_redis import RedisBackend
from ccat_buffering_redis._model_index import BUCKET
from ccat_buffering_redis.compression import MARKER, PLAIN_MARKER, entry_bytes, entry_text

from support import observation

MODEL = "Obs"


@pytest_asyncio.fixture
async def backend(redis_client: aioredis.Redis) -> AsyncIterator[RedisBackend]:
    site_backend = RedisBackend(redis_client, site=new_site_name())
    yield site_backend
    await forget_site(redis_client, site_backend.keys.pattern())


async def write(backend: RedisBackend, tx: str, rid: str, kind: CacheKind, **fields: Any) -> None:
    await backend.cache.write(tx, [CacheWrite(MODEL, rid, kind, fields)], 600)


async def scanned(backend: RedisBackend, equals: dict[str, Any]) -> list[str]:
    """What find() must answer, worked out from list()."""
    return [
        r.record_id
        for r in await backend.cache.list(MODEL)
        if any(name in r.fields and r.fields[name] == v for name, v in equals.items())
    ]


async def found(backend: RedisBackend, equals: dict[str, Any]) -> list[str]:
    return [r.record_id for r in await backend.cache.find(MODEL, equals)]


async def test_a_learned_field_answers_as_a_scan_before_and_after_it_is_learned(
    backend: RedisBackend, redis_client: aioredis.Redis
) -> None:
    fields_key = backend.keys.fields(MODEL)
    for i in range(6):
        await write(backend, f"t{i}", f"r{i}", CacheKind.CREATE, package=i % 2, name=f"n{i}")
    assert not await redis_client.exists(fields_key)  # nothing indexed before a find
    assert await found(backend, {"package": 1}) == await scanned(backend, {"package": 1})
    assert await found(backend, {"package": 1}) == ["r1", "r3", "r5"]
    # Written after the field was learned: creates, an update that moves a record, a release.
    await write(backend, "t6", "r6", CacheKind.CREATE, package=1, name="n6")
    await write(backend, "t7", "r1", CacheKind.UPDATE, package=0)
    await backend.cache.release(["t3"])
    for value in (0, 1, 2):
        assert await found(backend, {"package": value}) == await scanned(
            backend, {"package": value}
        )
    assert await found(backend, {"package": 1}) == ["r5", "r6"]
    # Only the learned field is indexed; another is learned on its own first find.
    members = await redis_client.zrange(fields_key, 0, -1)
    assert all(m.startswith((b"\0package", b"package=")) for m in members)
    assert await found(backend, {"name": "n4"}) == ["r4"]
    assert b"\0name" in await redis_client.zrange(fields_key, 0, -1)


async def test_a_registration_that_expired_is_learned_again(
    backend: RedisBackend, redis_client: aioredis.Redis
) -> None:
    await write(backend, "t1", "r1", CacheKind.CREATE, package=1)
    assert await found(backend, {"package": 1}) == ["r1"]
    await redis_client.delete(backend.keys.fields(MODEL))  # as if it had expired
    await write(backend, "t2", "r2", CacheKind.CREATE, package=1)  # not indexed: not registered
    assert await found(backend, {"package": 1}) == ["r1", "r2"]


async def test_indexed_fields_are_indexed_from_a_models_first_write(
    redis_client: aioredis.Redis,
) -> None:
    backend = RedisBackend(redis_client, site=new_site_name(), indexed_fields={MODEL: ["package"]})
    try:
        await write(backend, "t1", "r1", CacheKind.CREATE, package=7, name="a")
        await write(backend, "t2", "r2", CacheKind.CREATE, package=7, name="b")
        members = await redis_client.zrange(backend.keys.fields(MODEL), 0, -1)
        assert b"\0package" in members
        assert sum(m.startswith(b"package=7\0") for m in members) == 2
        assert not any(m.startswith(b"name=") for m in members)
        assert await found(backend, {"package": 7}) == ["r1", "r2"]
    finally:
        await forget_site(redis_client, backend.keys.pattern())


async def test_a_field_holding_the_record_id_is_stored_folded_and_read_whole(
    backend: RedisBackend, redis_client: aioredis.Redis
) -> None:
    await write(backend, "t1", "r-1", CacheKind.CREATE, id="r-1", other="r-1", n=1)
    raw = await redis_client.get(backend.keys.buffered(MODEL, "r-1"))
    assert raw is not None and b"\nid=\n" in raw and b"\nn=1" in raw
    record = await backend.cache.get(MODEL, "r-1")
    assert record is not None and record.fields == {"id": "r-1", "other": "r-1", "n": 1}
    assert await found(backend, {"id": "r-1"}) == ["r-1"]
    assert await found(backend, {"id": "r-2"}) == []


@pytest.mark.parametrize("count", [1, BUCKET - 1, BUCKET, BUCKET + 1, 2 * BUCKET + 1])
async def test_model_index_buckets_keep_the_order_stay_listpacks_and_go_with_their_records(
    backend: RedisBackend, redis_client: aioredis.Redis, count: int
) -> None:
    ids = [f"r{i:04d}" for i in range(count)]
    # Some writes share a call and some do not, so numbers come in budgets of both kinds.
    for start in range(0, count, 50):
        group = [
            CacheWrite(MODEL, rid, CacheKind.CREATE, {"n": 1}) for rid in ids[start : start + 50]
        ]
        await backend.cache.write(f"t{start}", group, 600)
    await write(backend, "late", ids[0], CacheKind.UPDATE, n=2)  # keeps its place
    assert [r.record_id for r in await backend.cache.list(MODEL)] == ids
    listed = backend.keys.index(MODEL)
    buckets = [int(b) for b in await redis_client.zrange(listed, 0, -1)]
    assert buckets
    total = 0
    for b in buckets:
        key = backend.keys.index_bucket(MODEL, b)
        assert await redis_client.object("encoding", key) == b"listpack"
        size = await redis_client.zcard(key)
        assert 0 < size <= BUCKET
        assert await redis_client.pttl(key) > 0
        total += size
    assert total == count
    await backend.cache.release([f"t{start}" for start in range(0, count, 50)] + ["late"])
    assert await backend.cache.list(MODEL) == []
    assert not await redis_client.exists(
        listed, *(backend.keys.index_bucket(MODEL, b) for b in buckets)
    )


async def test_an_expired_record_leaves_the_model_index_at_the_next_list(
    backend: RedisBackend, redis_client: aioredis.Redis
) -> None:
    await write(backend, "t1", "r1", CacheKind.CREATE, n=1)
    await write(backend, "t2", "r2", CacheKind.CREATE, n=2)
    await redis_client.delete(backend.keys.buffered(MODEL, "r1"))  # as if it had expired
    assert [r.record_id for r in await backend.cache.list(MODEL)] == ["r2"]
    await write(backend, "t3", "r1", CacheKind.CREATE, n=3)  # written again: a new place
    assert [r.record_id for r in await backend.cache.list(MODEL)] == ["r2", "r1"]


@pytest.mark.parametrize("count", [BUCKET - 1, BUCKET + 1, 3 * BUCKET])
async def test_state_buckets_keep_order_counts_and_reconcile(
    backend: RedisBackend, redis_client: aioredis.Redis, count: int
) -> None:
    ids = [f"tx{i:04d}" for i in range(count)]
    for tid in ids:
        await backend.status.put(TransactionStatus(transaction_id=tid, state="buffered"), 600)
    assert await backend.status.ids(TransactionState.BUFFERED) == ids
    assert await backend.status.ids(TransactionState.BUFFERED, limit=5) == ids[:5]
    for tid in ids[:3]:
        status = await backend.status.get(tid)
        assert status is not None
        await backend.status.put(status.advance(TransactionState.PROCESSING), 600)
    counts = await backend.status.counts()
    assert counts[TransactionState.BUFFERED] == count - 3
    assert counts[TransactionState.PROCESSING] == 3
    assert await backend.status.ids(TransactionState.BUFFERED) == ids[3:]
    listed = backend.keys.state(TransactionState.BUFFERED)
    for b in await redis_client.zrange(listed, 0, -1):
        key = backend.keys.state_bucket(TransactionState.BUFFERED, int(b))
        assert await redis_client.object("encoding", key) == b"listpack"
        assert await redis_client.pttl(key) == -1  # bounded, as the index it replaces
        assert backend.keys.is_bounded(key)
    await redis_client.delete(backend.keys.status(ids[-1]))  # a ghost, by hand
    for _ in range(count // 500 + 2):
        counts = await backend.status.counts()
    assert counts[TransactionState.BUFFERED] == count - 4


async def test_a_terminal_state_index_expires_with_its_statuses_by_itself(
    backend: RedisBackend, redis_client: aioredis.Redis
) -> None:
    """Issue 23: no command has to run for a finished status's index entry to go."""
    for tid, ttl in (("tx1", 0.2), ("tx2", 0.4)):
        status = TransactionStatus(transaction_id=tid, state="replicated")
        await backend.status.put(status, ttl)
    index = backend.keys.state(TransactionState.REPLICATED)
    assert 0 < await redis_client.pttl(index) <= 400  # its longest-lived status's
    deadline = asyncio.get_running_loop().time() + 5
    while await redis_client.exists(index):
        assert asyncio.get_running_loop().time() < deadline, "the index outlived its statuses"
        await asyncio.sleep(0.05)


async def test_a_record_names_its_creator_without_an_id_cache_key(
    backend: RedisBackend, redis_client: aioredis.Redis
) -> None:
    """Issue 23: the ID-cache key exists only when the creator is not the record's first."""
    await write(backend, "t1", "r1", CacheKind.CREATE, n=1)
    assert not await redis_client.exists(backend.keys.ids(MODEL, "r1"))
    assert await backend.cache.created_by(MODEL, "r1") == "t1"
    await write(backend, "t2", "r2", CacheKind.UPDATE, n=1)
    await write(backend, "t3", "r2", CacheKind.CREATE, n=2)  # created by its second
    assert await redis_client.get(backend.keys.ids(MODEL, "r2")) == b"t3"
    assert await backend.cache.created_by(MODEL, "r2") == "t3"
    await write(backend, "t4", "r1", CacheKind.UPDATE, n=3)
    await backend.cache.release(["t1", "t3"])  # the creators go; the records stay
    assert await backend.cache.created_by(MODEL, "r1") is None
    assert await backend.cache.created_by(MODEL, "r2") is None
    assert not await redis_client.exists(backend.keys.ids(MODEL, "r2"))


@pytest.mark.parametrize(
    "created",
    [
        dt.datetime(2026, 12, 7, 10, 13, 49, 62394, tzinfo=dt.UTC),
        dt.datetime(1960, 1, 1, tzinfo=dt.UTC),  # before 1970: the fallback
        dt.datetime(2200, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC),  # past a float's microseconds
    ],
)
async def test_a_status_keeps_its_times_in_a_short_tail_and_older_statuses_still_read(
    backend: RedisBackend, redis_client: aioredis.Redis, created: dt.datetime
) -> None:
    """Issue 23: a buffered status fits jemalloc's 192-byte class (times as integers)."""
    status = TransactionStatus(
        transaction_id="t-1",
        endpoint="start_observation",
        state=TransactionState.COMMITTED,
        commit_lsn="0/16B3748",
        last_error="a } and an @ in the text",
        created_at=created,
        updated_at=created + dt.timedelta(microseconds=2302),
        committed_at=created - dt.timedelta(microseconds=7),
    )
    await backend.status.put(status, 600)
    raw = await redis_client.get(backend.keys.status("t-1"))
    assert raw is not None and b"_at" not in raw and raw.endswith(b",2302,-7")
    assert await backend.status.get("t-1") == status
    # A status written before the times had their tail: its JSON holds them.
    old = status.model_dump_json(exclude={"transaction_id"}, exclude_defaults=True)
    await redis_client.set(backend.keys.status("t-1"), old)
    assert await backend.status.get("t-1") == status


async def test_zlib_entries_use_the_dictionary_and_older_entries_still_read() -> None:
    text = '{"format_version":1,"transaction_id":"t","endpoint":"e","steps":[]}'
    stored = entry_bytes(text, "zlib")
    assert isinstance(stored, bytes) and stored.startswith(MARKER)
    assert entry_text(stored) == text
    assert entry_text(PLAIN_MARKER + zlib.compress(text.encode())) == text
    assert entry_text(stored[:-4]).startswith("\ufffd")  # cut short: read as it is


async def test_zlib_entries_are_readable_by_inspection(redis_client: aioredis.Redis) -> None:
    backend = RedisBackend(redis_client, site=new_site_name(), compression="zlib")
    try:
        tx = observation(1)[0]
        await TransactionManager(backend).buffer(tx)
        (raw,) = await redis_client.lrange(backend.keys.buffer, 0, -1)
        assert raw.startswith(MARKER)
        assert await backend.find_payload(tx.transaction_id) == tx.to_json()
    finally:
        await forget_site(redis_client, backend.keys.pattern())
