"""The claim reads the claimed transactions' statuses in its own call (issue #23)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis
from services import forget_site

from ccat_buffering.buffer._entries import ClaimsWithStatuses
from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.models import TransactionState
from ccat_buffering_memory import MemoryBackend
from ccat_buffering_redis import RedisBackend

from support import observation


@pytest_asyncio.fixture
async def backend(redis_client: aioredis.Redis) -> AsyncIterator[RedisBackend]:
    site_backend = RedisBackend(redis_client, site=new_site_name())
    yield site_backend
    await forget_site(redis_client, site_backend.keys.pattern())


async def test_each_claim_comes_with_the_status_its_transaction_has(
    redis_client: aioredis.Redis, backend: RedisBackend
) -> None:
    assert isinstance(backend.buffer, ClaimsWithStatuses)
    assert not isinstance(MemoryBackend(site="m").buffer, ClaimsWithStatuses)
    manager = TransactionManager(backend)
    squeezed = RedisBackend(redis_client, site=backend.site, compression="zlib")
    plain, _ = observation(1)
    compressed, _ = observation(2)
    bare, _ = observation(3)
    await manager.buffer(plain)
    await TransactionManager(squeezed).buffer(compressed)
    await redis_client.lpush(backend.keys.buffer, bare.to_json())  # an entry with no status
    stored = await backend.status.get(plain.transaction_id)
    claimed = await backend.buffer.claim_with_statuses(10, 30)
    assert [(c.payload, i, s, m) for c, i, s, m in claimed] == [
        (plain.to_json(), plain.transaction_id, stored, None),
        (compressed.to_json(), None, None, None),  # not read in the script: the drain asks
        (bare.to_json(), bare.transaction_id, None, None),
    ]


async def test_a_retried_transaction_is_claimed_with_its_attempts_and_history(
    backend: RedisBackend,
) -> None:
    manager = TransactionManager(backend)
    tx, _ = observation(1)
    await manager.buffer(tx)
    (first,) = await manager.claim(1, 30)
    (retrying,) = await manager.failed([(first, ValueError("boom"), FailureKind.DATA)])
    assert retrying.attempts == 1
    deadline = time.monotonic() + 10
    while not (again := await manager.claim(1, 30)):  # after the retry's backoff
        assert time.monotonic() < deadline, "the retried transaction was never claimed again"
        await asyncio.sleep(0.05)
    (delivery,) = again
    assert delivery.status.state is TransactionState.PROCESSING
    assert delivery.status.attempts == 1 and delivery.status.last_error == retrying.last_error
    assert delivery.status.history == retrying.history
    assert await backend.status.get(tx.transaction_id) == delivery.status
