"""Idempotency keys: one transaction per key, on memory and Redis, at main and secondary sites."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from services import REDIS_URL, forget_site, redis_client
from sqlalchemy import func, select

from ccat_buffering import BufferingCoordinator, BufferingSettings
from ccat_buffering.buffer import idempotency as idem
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.errors import IdempotencyKeyReusedError, TransactionValidationError
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry

from support import make_schema, observation


@pytest_asyncio.fixture(params=["memory", "redis"])
async def site(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BufferingCoordinator]:
    name = new_site_name()
    client = None
    if request.param == "redis":
        client = await redis_client()
    settings = BufferingSettings(
        site_name=name,
        backend_url="memory://" if client is None else REDIS_URL,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'main.db'}",
        site_type=getattr(request, "site_type", "secondary"),
    )
    registry = ModelRegistry.from_base(Base)
    try:
        async with BufferingCoordinator.from_settings(
            settings, registry=registry, start=False
        ) as s:
            await make_schema(s.engine)
            await s.prepare_database()
            yield s
    finally:
        if client is not None:
            await forget_site(client, f"site:{{{name}}}:*")
            await client.aclose()  # type: ignore[attr-defined]


async def _depth(site: BufferingCoordinator) -> int:
    return (await site.backend.buffer.stats()).depth


async def test_a_retry_with_the_key_gets_the_first_transaction(site: BufferingCoordinator) -> None:
    tx, _ = observation(1)
    first = await site.submit(tx, idempotency_key="req-1")
    again = await site.submit(tx, idempotency_key="req-1")
    assert again.transaction_id == first.transaction_id
    assert again.state is TransactionState.BUFFERED
    assert await _depth(site) == 1
    assert site.activity.replays == 1 and site.activity.submits["buffered"] == 1


async def test_the_key_with_other_steps_is_refused_and_writes_nothing(
    site: BufferingCoordinator,
) -> None:
    tx, _ = observation(1)
    await site.submit(tx, idempotency_key="req-1")
    other, _ = observation(2)
    with pytest.raises(IdempotencyKeyReusedError, match="used for another request"):
        await site.submit(other, idempotency_key="req-1")
    assert await _depth(site) == 1
    assert isinstance(IdempotencyKeyReusedError("x"), TransactionValidationError)  # a 422


async def test_concurrent_duplicates_buffer_once(site: BufferingCoordinator) -> None:
    tx, _ = observation(1)
    statuses = await asyncio.gather(*(site.submit(tx, idempotency_key="req-c") for _ in range(20)))
    assert {s.transaction_id for s in statuses} == {tx.transaction_id}
    assert await _depth(site) == 1
    counts = await site.backend.status.counts()
    assert counts[TransactionState.BUFFERED] == 1


async def test_a_refused_submit_frees_its_key(site: BufferingCoordinator) -> None:
    tx, _ = observation(1)
    tx.steps[0].data["no_such_column"] = 1
    with pytest.raises(TransactionValidationError):
        await site.submit(tx, idempotency_key="req-r")
    good, _ = observation(2)
    assert (await site.submit(good, idempotency_key="req-r")).state is TransactionState.BUFFERED


async def test_a_first_request_that_died_after_its_claim_is_finished_by_the_retry(
    site: BufferingCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idem, "SETTLE_SECONDS", 0.1)
    tx, _ = observation(1)
    record = idem.KeyRecord(
        fingerprint=idem._transaction_fingerprint(tx),
        transaction_id=tx.transaction_id,
        transaction=tx.to_json(),
    )
    keys = idem.keys_of(site.backend.status)
    assert await keys.claim_key(idem.digest("req-d"), record.model_dump_json(), 60) is None
    status = await site.submit(tx, idempotency_key="req-d")
    assert status.transaction_id == tx.transaction_id and await _depth(site) == 1
    again = await site.submit(tx, idempotency_key="req-d")
    assert again.transaction_id == tx.transaction_id and await _depth(site) == 1


async def test_keys_live_idempotency_ttl(site: BufferingCoordinator) -> None:
    tx, _ = observation(1)
    await site.submit(tx, idempotency_key="req-t")
    if site.settings.backend_url.startswith("redis"):
        client = await redis_client()
        key = f"site:{{{site.backend.site}}}:idempotency:{idem.digest('req-t')}"
        ttl = await client.pttl(key)  # type: ignore[attr-defined]
        await client.aclose()  # type: ignore[attr-defined]
        assert (
            site.settings.idempotency_ttl * 1000 - 60_000
            < ttl
            <= site.settings.idempotency_ttl * 1000
        )
    assert site.settings.idempotency_ttl >= site.settings.status_ttl


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_main_site_applies_once(backend: str, tmp_path: Path) -> None:
    name = new_site_name()
    client = await redis_client() if backend == "redis" else None
    settings = BufferingSettings(
        site_name=name,
        site_type="main",
        backend_url=REDIS_URL if client else "memory://",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'main.db'}",
    )
    try:
        async with BufferingCoordinator.from_settings(
            settings, registry=ModelRegistry.from_base(Base), start=False
        ) as site:
            await make_schema(site.engine)
            await site.prepare_database()
            tx, _ = observation(1)
            statuses = await asyncio.gather(
                *(site.submit(tx, idempotency_key="main-1") for _ in range(5))
            )
            assert {s.state for s in statuses} == {TransactionState.COMMITTED}
            async with site.engine.connect() as conn:
                rows = (await conn.execute(select(func.count(ExecutedObsUnit.id)))).scalar_one()
            assert rows == 1
    finally:
        if client is not None:
            await forget_site(client, f"site:{{{name}}}:*")
            await client.aclose()  # type: ignore[attr-defined]
