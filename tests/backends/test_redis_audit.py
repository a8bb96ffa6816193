"""The key audit in chunks: leaks found across chunks, unfinished statuses and bounded keys not."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from services import forget_site

import ccat_buffering_redis.inspection as inspection
from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.testing import new_site_name
from ccat_buffering_redis import RedisBackend

from support import observation


async def test_the_audit_reads_in_chunks_and_finds_every_leak(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inspection, "AUDIT_CHUNK", 7)  # many chunks from a few keys
    backend = RedisBackend(redis_client, site=new_site_name())
    try:
        manager = TransactionManager(backend)
        txs = [observation(i)[0] for i in range(12)]
        await manager.buffer_many(txs)
        finished = txs[0].transaction_id
        (delivery,) = await manager.claim(1, 60)
        await manager.failed([(delivery, ValueError("never"), FailureKind.PERMANENT)])
        assert await backend.audit_keys() == []  # unfinished statuses have no TTL by design
        status_key = backend.keys.status(finished)
        await redis_client.persist(status_key)  # a failed status that would never expire
        stray = backend.keys.status("no-such-transaction")
        await redis_client.set(stray, "x")  # no status in it: a leak as well
        told: list[tuple[int, int]] = []
        leaks = await backend.audit_keys(lambda done, total: told.append((done, total)))
        assert sorted(leak.key for leak in leaks) == sorted([status_key, stray])
        assert all(leak.ttl_seconds is None for leak in leaks)
        assert len(told) > 1 and told[-1][0] == told[-1][1] > 0  # it ends at its total
        assert [done for done, _ in told] == sorted(done for done, _ in told)
    finally:
        await forget_site(redis_client, backend.keys.pattern())
