"""A Redis that is full, evicting, restarted without persistence or stopped, told plainly.

Each test starts its own ``redis-server`` on a free loopback port (see
``redis_servers.py``) and keeps its volumes small. The counts each fault
leaves (acknowledged, applied, applied twice, lost) are printed for the
issue's note (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import sqlalchemy as sa
from redis_servers import ThrowawayRedis
from services import started
from typer.testing import CliRunner

from ccat_buffering.buffer.cache_writes import cache_writes
from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.cli import app
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.errors import BackendFullError, BackendUnavailableError, ConfigurationError
from ccat_buffering.observe.health import Health
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_redis import RedisBackend
from ccat_buffering_redis.scripts import keys_fragment
from ccat_buffering_redis.stores import RedisWriteBatch

from support import make_schema, observation

POLICIES = [
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]


def _counts(label: str, acked: list[Transaction], rows: list[int]) -> dict[str, int]:
    wanted = {int((tx.steps[0].data or {})["obs_unit_id"]) for tx in acked}
    counts = {
        "acked": len(acked),
        "applied": len(wanted & set(rows)),
        "twice": len(rows) - len(set(rows)),
        "lost": len(wanted - set(rows)),
    }
    print(f"\n[{label}] {json.dumps(counts)}")
    return counts


async def _applied(coordinator: BufferingCoordinator) -> list[int]:
    async with coordinator.engine.connect() as conn:
        result = await conn.execute(sa.select(ExecutedObsUnit.obs_unit_id))
        return [int(v) for v in result.scalars()]


def _settings(server: ThrowawayRedis, tmp_path: Path, **more: object) -> BufferingSettings:
    return BufferingSettings(
        site_name=new_site_name(),
        backend_url=server.url,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'main.db'}",
        poll_interval=0.05,
        **more,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture
async def make_site(tmp_path: Path) -> AsyncIterator[object]:
    opened: list[BufferingCoordinator] = []

    async def make(settings: BufferingSettings, *, start: bool = False) -> BufferingCoordinator:
        site = BufferingCoordinator.from_settings(
            settings, registry=ModelRegistry.from_base(Base), start=start
        )
        await make_schema(site.engine)
        await site.prepare_database()
        opened.append(site)
        return site

    yield make
    for site in opened:
        await site.aclose()


def _env(settings: BufferingSettings) -> dict[str, str]:
    return {
        "CCAT_BUFFERING_SITE_NAME": settings.site_name,
        "CCAT_BUFFERING_BACKEND_URL": settings.backend_url,
        "CCAT_BUFFERING_DATABASE_URL": settings.database_url,
    }


async def _status(settings: BufferingSettings) -> tuple[int, Health, float]:
    began = time.perf_counter()
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["status", "--json"], env=_env(settings)
    )
    took = time.perf_counter() - began
    assert result.stdout, result.output
    return result.exit_code, Health.model_validate_json(result.stdout), took


async def _fill(
    manager: TransactionManager, start: int
) -> tuple[list[Transaction], BackendFullError]:
    """Buffer (20 callers at a time, coalesced) until Redis refuses: the acknowledged ones."""
    acked: list[Transaction] = []
    i = start
    while True:
        txs = [observation(i + k)[0] for k in range(20)]
        i += 20
        results = await asyncio.gather(*(manager.buffer(tx) for tx in txs), return_exceptions=True)
        refused = None
        for tx, result in zip(txs, results, strict=True):
            if isinstance(result, BackendFullError):
                refused = result
            elif isinstance(result, BaseException):
                raise result
            else:
                acked.append(tx)
        if refused is not None:
            return acked, refused
        assert len(acked) < 20_000, "Redis never filled up"


@pytest.fixture
def full_redis() -> Iterator[ThrowawayRedis]:
    with started(ThrowawayRedis("--maxmemory-policy", "noeviction")) as server:
        client = server.client()
        client.config_set("maxmemory", server.used_memory() + 1_500_000)
        yield server


async def test_a_full_redis_refuses_new_writes_and_never_stalls_the_drain(
    full_redis: ThrowawayRedis, tmp_path: Path, make_site: object
) -> None:
    settings = _settings(full_redis, tmp_path, status_ttl=4.0)
    site: BufferingCoordinator = await make_site(settings)  # type: ignore[operator]
    limit = full_redis.client().config_get("maxmemory")["maxmemory"]
    acked, refused = await _fill(site.manager, 0)
    assert "full" in str(refused) and "nothing of this write was stored" in str(refused)
    code, health, _ = await _status(settings)
    # Full, or (the refused calls' arguments freed) just under the limit: never healthy.
    assert code == 1, health.warnings
    assert any(" is full " in w or "refused soon" in w for w in health.warnings), health.warnings

    # The database is away: a worker claims, fails to reach it and returns its
    # claims (statuses, receipts, the head of the queue), all on a full Redis.
    away = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{full_redis.port + 1}/none")
    try:
        stuck = BackgroundProcessor(site.manager, TransactionExecutor(away, site.registry))
        for _ in range(3):
            await stuck.run_once()
        assert stuck.counters.outages >= 1
        # A crash leaves claims in flight; their recovery needs no new memory either.
        await site.manager.claim(50, 60)
        assert await site.backend.buffer.recover(include_unexpired=True) == 50
        await site.backend.lease.release(stuck.holder)
    finally:
        await away.dispose()

    # The database is back: everything acknowledged is applied once, maxmemory untouched.
    assert await site.processor.drain(timeout=60)
    counts = _counts("full redis, database away then back", acked, await _applied(site))
    assert counts["applied"] == counts["acked"] and counts["twice"] == counts["lost"] == 0
    assert full_redis.client().config_get("maxmemory")["maxmemory"] == limit
    # Replication confirmed releases the caches (on a Redis still full of
    # statuses and caches): their memory comes back at once.
    drained = full_redis.used_memory()
    deadline = time.monotonic() + 30
    while (await site.tracker.poll_once()).pending:
        assert time.monotonic() < deadline
    released = full_redis.used_memory()
    assert drained - released > 200_000, (drained, released)
    # What is left is finished statuses; once their lifetime ends, new
    # transactions are taken again without anyone having to act.
    while True:
        try:
            await site.manager.buffer(observation(10**6)[0])
            break
        except BackendFullError:
            assert time.monotonic() < deadline, "Redis stayed full after the statuses expired"
            await asyncio.sleep(0.2)


async def test_oom_inside_coalesced_calls_refuses_each_buffering_group_whole(
    full_redis: ThrowawayRedis, tmp_path: Path, make_site: object
) -> None:
    site: BufferingCoordinator = await make_site(_settings(full_redis, tmp_path))  # type: ignore[operator]
    manager, backend = site.manager, site.backend
    assert isinstance(backend, RedisBackend)
    for i in range(15):
        await manager.buffer(observation(i)[0])
    claimed = await manager.claim(15, 60)
    await _fill(manager, 1000)
    depth = (await backend.buffer.stats()).depth
    # Twenty callers buffer while the worker acknowledges: one script call, in every order.
    for order in ("acks first", "acks last"):
        made = [observation(5000 + k) for k in range(20)]
        txs = [tx for tx, _ in made]
        done = claimed[:5] if order == "acks first" else claimed[5:10]
        calls = [manager.buffer(tx) for tx in txs]
        settle = site.manager.committed(done, None)
        results = await asyncio.gather(
            *([settle, *calls] if order == "acks first" else [*calls, settle]),
            return_exceptions=True,
        )
        outcomes = results[1:] if order == "acks first" else results[:-1]
        assert all(isinstance(r, BackendFullError) for r in outcomes), results
        assert not isinstance(results[0 if order == "acks first" else -1], BaseException)
        assert (await backend.buffer.stats()).depth == depth
        assert await backend.status.get_many([tx.transaction_id for tx in txs]) == [None] * 20
        for _, obs_id in made:
            assert await backend.cache.created_by("ExecutedObsUnit", obs_id) is None
    # And in one script call for sure: buffering groups around an acknowledging one.
    made = [observation(6000 + k) for k in range(2)]
    groups = []
    for tx, _ in made:
        batch = RedisWriteBatch()
        batch.push(tx.to_json())
        batch.write_cache(tx.transaction_id, cache_writes(tx), 60)
        groups.append(batch.ops)
    acks = RedisWriteBatch()
    for delivery in claimed[10:]:
        acks.ack(delivery.claim.receipt)
    results = await backend._apply_groups([groups[0], acks.ops, groups[1]])
    assert isinstance(results[0], BackendFullError) and isinstance(results[2], BackendFullError)
    assert results[1] == 5
    assert (await backend.buffer.stats()).depth == depth
    for _, obs_id in made:
        assert await backend.cache.created_by("ExecutedObsUnit", obs_id) is None
    assert (await backend.buffer.stats()).in_flight == 0


@pytest.fixture(scope="module")
def policy_redis() -> Iterator[ThrowawayRedis]:
    with started(ThrowawayRedis()) as server:
        yield server


@pytest.mark.parametrize("policy", POLICIES)
async def test_each_eviction_policy_is_refused_unless_allowed(
    policy_redis: ThrowawayRedis, policy: str
) -> None:
    policy_redis.client().config_set("maxmemory-policy", policy)
    try:
        site = new_site_name()
        async with RedisBackend.from_url(policy_redis.url, site=site) as backend:
            manager = TransactionManager(backend)
            with pytest.raises(ConfigurationError, match=policy) as refused:
                await manager.buffer(observation(1)[0])
            assert "noeviction" in str(refused.value) and "allow_eviction" in str(refused.value)
            assert policy_redis.client().keys(f"site:{{{site}}}:*") == []
            assert any(policy in w for w in await backend.buffer_warnings())
        url = policy_redis.url + "?allow_eviction=true"
        async with RedisBackend.from_url(url, site=site) as allowed:
            await TransactionManager(allowed).buffer(observation(1)[0])
            warnings = await allowed.buffer_warnings()
            assert any("allow_eviction is set" in w for w in warnings), warnings
    finally:
        policy_redis.client().config_set("maxmemory-policy", "noeviction")


async def test_a_policy_that_cannot_be_read_is_a_warning() -> None:
    with started(ThrowawayRedis("--rename-command", "CONFIG", "")) as server:
        async with RedisBackend.from_url(server.url, site=new_site_name()) as backend:
            await TransactionManager(backend).buffer(observation(1)[0])
            warnings = await backend.buffer_warnings()
            assert any("could not be checked" in w for w in warnings), warnings


async def test_kill_9_without_persistence_is_reported_as_loss(
    tmp_path: Path, make_site: object, caplog: pytest.LogCaptureFixture
) -> None:
    with started(ThrowawayRedis()) as server:
        settings = _settings(server, tmp_path)
        site: BufferingCoordinator = await make_site(settings)  # type: ignore[operator]
        assert await site.watch.check() == []  # the worker at start: the buffer is stamped
        acked = [observation(i)[0] for i in range(30)]
        for tx in acked:
            await site.manager.buffer(tx)
        code, health, _ = await _status(settings)
        assert not any("lost state" in w for w in health.warnings)
        server.kill9()
        server.start()
        # A fresh `ccat-buffering status` says so, before any worker looked.
        code, health, _ = await _status(settings)
        lost = [w for w in health.warnings if "the buffer lost state" in w]
        assert code == 1 and lost and "marker is gone" in lost[0], health.warnings
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["inspect", acked[0].transaction_id, "--json"],
            env=_env(settings),
        )
        assert any("lost state" in loss for loss in json.loads(result.stdout)["buffer_losses"])
        # The worker reports it at start, records it once, and drains what is left.
        caplog.set_level(logging.ERROR, logger="ccat_buffering.observe.buffer_loss")
        worker: BufferingCoordinator = await make_site(settings, start=True)  # type: ignore[operator]
        async with worker:
            deadline = time.monotonic() + 10
            while not any("lost state" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the worker did not report the loss"
                await asyncio.sleep(0.05)
            assert len(await worker.watch.open_losses()) == 1
            assert await worker.processor.drain(timeout=10)
        counts = _counts("kill -9 without persistence", acked, await _applied(site))
        assert counts["lost"] == len(acked) and counts["twice"] == 0
        code, health, _ = await _status(settings)
        assert sum("lost state" in w for w in health.warnings) == 1
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["status", "--acknowledge-loss"], env=_env(settings)
        )
        assert "acknowledged 1 loss" in result.output
        code, health, _ = await _status(settings)
        assert not any("lost state" in w for w in health.warnings)


async def test_kill_9_with_appendfsync_always_loses_nothing(
    tmp_path: Path, make_site: object
) -> None:
    server = ThrowawayRedis("--appendonly", "yes", "--appendfsync", "always")
    with started(server):
        settings = _settings(server, tmp_path)
        site: BufferingCoordinator = await make_site(settings)  # type: ignore[operator]
        await site.watch.check()
        acked = [observation(i)[0] for i in range(30)]
        await asyncio.gather(*(site.manager.buffer(tx) for tx in acked))
        server.kill9()
        server.start()
        with contextlib.suppress(BackendUnavailableError):
            await site.backend.buffer.stats()  # the pooled connection died with the server
        assert await site.watch.check() == []
        assert await site.processor.drain(timeout=20)
        counts = _counts("kill -9 with appendfsync always", acked, await _applied(site))
        assert counts["applied"] == len(acked) and counts["twice"] == counts["lost"] == 0


async def test_a_stopped_redis_makes_buffer_raise_within_the_timeout(
    tmp_path: Path, make_site: object
) -> None:
    with started(ThrowawayRedis()) as server:
        settings = _settings(server, tmp_path, redis_socket_timeout=0.5)
        site: BufferingCoordinator = await make_site(settings)  # type: ignore[operator]
        tx = observation(1)[0]
        await site.manager.buffer(observation(0)[0])
        server.pause()
        began = time.monotonic()
        with pytest.raises(BackendUnavailableError) as unavailable:
            await site.manager.buffer(tx)
        took = time.monotonic() - began
        server.resume()
        assert took < 1.5, took
        message = str(unavailable.value)
        assert "may or may not have been stored" in message and "same transaction" in message
        # Resubmitting the same object is safe: applied once, whatever the first call did.
        await site.manager.buffer(tx)
        assert await site.processor.drain(timeout=20)
        counts = _counts("SIGSTOP then resubmit", [tx], await _applied(site))
        assert counts["applied"] == 1 and counts["twice"] == 0


def test_clients_opened_from_urls_have_timeouts_by_default() -> None:
    backend = RedisBackend.from_url("redis://127.0.0.1:1/0", site=new_site_name())
    kwargs = backend.client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5.0, 5.0)
    url = "redis://127.0.0.1:1/0?socket_timeout=0.25&socket_connect_timeout=none"
    backend = RedisBackend.from_url(url, site=new_site_name())
    kwargs = backend.client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.25, None)
    with pytest.raises(ConfigurationError, match="socket_timeout"):
        RedisBackend.from_url("redis://127.0.0.1:1/0?socket_timeout=soon", site=new_site_name())


_FILL = (
    keys_fragment()
    + """
-- The layout APPLY writes: a buffered status starts with its sequence number,
-- which names its bucket of state:buffered (see _state_index).
local entry, status = ARGV[2], ARGV[3]
local first, n = tonumber(ARGV[4]), tonumber(ARGV[5])
local body = (string.gsub(status, '^%d+', ''))
for from = first, first + n - 1, 500 do
  local entries, statuses, buckets = {}, {}, {}
  for i = from, math.min(from + 499, first + n - 1) do
    local id = string.format('00000000-0000-4000-8000-%012d', i)
    local seq = i + 1000
    local b = math.floor(seq / BUCKET)
    entries[#entries + 1] = entry
    statuses[#statuses + 1] = STATUS .. id
    statuses[#statuses + 1] = seq .. body
    buckets[b] = buckets[b] or {}
    table.insert(buckets[b], seq - b * BUCKET)
    table.insert(buckets[b], id)
  end
  redis.call('LPUSH', BUF, unpack(entries))
  redis.call('MSET', unpack(statuses))
  for b, scored in pairs(buckets) do
    redis.call('ZADD', STATE .. 'buffered:' .. b, unpack(scored))
    redis.call('ZADD', STATE .. 'buffered', b, b)
  end
end
redis.call('SET', SEQ, first + n + 1000)
return n
"""
)


async def test_status_at_200000_buffered_answers_within_2_seconds(
    tmp_path: Path, make_site: object
) -> None:
    with started(ThrowawayRedis()) as server:
        settings = _settings(server, tmp_path)
        site: BufferingCoordinator = await make_site(settings)  # type: ignore[operator]
        backend = site.backend
        assert isinstance(backend, RedisBackend)
        tx = observation(1)[0]
        await site.manager.buffer(tx)
        await site.watch.check()
        client = server.client()
        entry = client.lindex(backend.keys.buffer, 0)
        status = client.get(backend.keys.status(tx.transaction_id))
        fill = client.register_script(_FILL)
        for first in range(0, 200_000, 5_000):
            fill(args=[backend.keys.prefix, entry, status, first, 5_000])
        _, health, took = await _status(settings)
        print(f"\n[status at 200,001 buffered] {took:.2f} s")
        assert health.buffer.depth == 200_001 and health.states["buffered"] == 200_001
        assert took <= 2.0, took


async def test_status_shows_memory_per_transaction_rate_and_time_to_full(
    tmp_path: Path, make_site: object
) -> None:
    with started(ThrowawayRedis("--maxmemory", "100mb")) as server:
        settings = _settings(server, tmp_path)
        site: BufferingCoordinator = await make_site(settings)  # type: ignore[operator]
        await site.manager.buffer_many([observation(i)[0] for i in range(300)])
        _, health, _ = await _status(settings)
        memory = health.buffer.memory
        assert memory is not None and memory.limit_bytes == 100 * 2**20
        assert memory.policy == "noeviction"
        assert memory.bytes_per_transaction is not None
        assert 1_000 < memory.bytes_per_transaction < 10_000
        assert memory.buffering_per_second is not None and memory.buffering_per_second > 0
        assert memory.full_in_seconds is not None and memory.full_in_seconds > 0
        result = await asyncio.to_thread(CliRunner().invoke, app, ["status"], env=_env(settings))
        assert "per transaction" in result.stdout and "full in" in result.stdout


async def test_a_flush_and_a_counter_that_went_back_are_losses(
    tmp_path: Path, make_site: object
) -> None:
    with started(ThrowawayRedis()) as server:
        settings = _settings(server, tmp_path)
        site: BufferingCoordinator = await make_site(settings)  # type: ignore[operator]
        assert isinstance(site.backend, RedisBackend)
        await site.watch.check()
        for i in range(5):
            await site.manager.buffer(observation(i)[0])
        site.watch.save_every = 0
        await site.watch.check()
        server.client().flushdb()
        (loss,) = await site.watch.check()
        assert "marker is gone" in loss.cause and loss.held == 5
        # A failover to a replica that was behind: same marker, a lower counter.
        for i in range(5, 10):
            await site.manager.buffer(observation(i)[0])
        await site.watch.check()
        seq = int(server.client().get(site.backend.keys.seq) or 0)
        server.client().set(site.backend.keys.seq, seq - 3)
        losses = await site.watch.check()
        assert len(losses) == 2 and "counter went back" in losses[1].cause
        assert f"{seq - 2} to {seq}" in losses[1].describe()


async def test_status_answers_while_the_main_database_is_unreachable(tmp_path: Path) -> None:
    with started(ThrowawayRedis()) as server:
        away = f"postgresql+asyncpg://postgres@127.0.0.1:{server.port + 1}/none"
        settings = _settings(server, tmp_path).model_copy(update={"database_url": away})
        code, health, took = await _status(settings)
        assert code == 1 and took < 5.0
        assert any("could not check the buffer" in w for w in health.warnings), health.warnings


async def test_a_running_worker_finds_a_flush_on_its_next_look(
    tmp_path: Path, make_site: object, caplog: pytest.LogCaptureFixture
) -> None:
    with started(ThrowawayRedis()) as server:
        settings = _settings(server, tmp_path)
        caplog.set_level(logging.ERROR, logger="ccat_buffering.observe.buffer_loss")
        worker: BufferingCoordinator = await make_site(settings, start=True)  # type: ignore[operator]
        async with worker:
            deadline = time.monotonic() + 10
            while server.client().get(worker.backend.keys.epoch) is None:  # type: ignore[attr-defined]
                assert time.monotonic() < deadline, "the worker never stamped the buffer"
                await asyncio.sleep(0.05)
            server.client().flushdb()
            # Its own deadline: the worker looks every second, but a busy machine
            # may have taken most of the first one to start it.
            deadline = time.monotonic() + 10
            while not any("marker is gone" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the worker did not find the flush"
                await asyncio.sleep(0.05)
            assert len(await worker.watch.open_losses()) == 1
