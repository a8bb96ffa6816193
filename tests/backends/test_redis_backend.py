"""The Redis backend beyond the contract: injection, atomicity, key hygiene, bad data."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from services import REDIS_URL, forget_site

from ccat_buffering.buffer.cache_writes import cache_writes
from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.protocols import CacheKind, CacheWrite
from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.demo.simulation import simulate
from ccat_buffering.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    TransactionValidationError,
)
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction, TransactionState, TransactionStatus
from ccat_buffering_redis import RedisBackend, SiteKeys
from ccat_buffering_redis._coalescer import Coalescer
from ccat_buffering_redis._connect import take_compression
from ccat_buffering_redis._frame import SEP, Command
from ccat_buffering_redis.compression import MARKER
from ccat_buffering_redis.stores import RedisWriteBatch

from support import observation

ESCAPES = ["a:b", "*", "{x}", "a b", "a\nb", "tab\there", "x" * 4097, "", "site}", "ü"]


@pytest_asyncio.fixture
async def client(redis_client: aioredis.Redis) -> aioredis.Redis:
    return redis_client


@pytest_asyncio.fixture
async def backend(client: aioredis.Redis) -> AsyncIterator[RedisBackend]:
    site_backend = RedisBackend(client, site=new_site_name())
    yield site_backend
    await forget_site(client, site_backend.keys.pattern())


async def site_keys(client: aioredis.Redis, backend: RedisBackend) -> dict[str, int]:
    """Every key of the site with its TTL in ms (-1: none)."""
    keys = [k.decode() async for k in client.scan_iter(match=backend.keys.pattern(), count=1000)]
    ttls = {key: await client.pttl(key) for key in keys}
    return {key: ttl for key, ttl in ttls.items() if ttl != -2}  # -2: expired meanwhile


async def untracked(backend: RedisBackend, keys: dict[str, int]) -> list[str]:
    """Keys with no TTL that are neither bounded structures nor unfinished statuses."""
    bad = []
    for key, ttl in keys.items():
        if ttl > 0 or backend.keys.is_bounded(key):
            continue
        transaction_id = backend.keys.status_id(key)
        if transaction_id is not None:
            status = await backend.status.get(transaction_id)
            if status is not None and not status.state.is_terminal:
                continue
        bad.append(key)
    return bad


@pytest.mark.parametrize("name", ESCAPES)
async def test_names_that_escape_the_schema_are_refused_before_any_call(name: str) -> None:
    # Port 1 refuses connections: any Redis call would raise BackendUnavailableError.
    with pytest.raises(TransactionValidationError):
        RedisBackend.from_url("redis://127.0.0.1:1/0", site=name)
    with pytest.raises(TransactionValidationError):
        SiteKeys(name)
    unreachable = RedisBackend.from_url("redis://127.0.0.1:1/0", site="fine")
    try:
        tx = TransactionBuilder("x")
        with pytest.raises(TransactionValidationError):
            tx.create(name, {"a": 1})
        bad_write = CacheWrite(name, "r1", CacheKind.CREATE, {"a": 1})
        with pytest.raises(TransactionValidationError):
            await unreachable.cache.write("t1", [bad_write], 60)
        bad_id = CacheWrite("Model", name, CacheKind.CREATE, {"a": 1})
        with pytest.raises(TransactionValidationError):
            await unreachable.cache.write("t1", [bad_id], 60)
        # The same backend, given good names, does reach for Redis.
        with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:1"):
            await unreachable.buffer.stats()
    finally:
        await unreachable.aclose()


async def test_a_failure_inside_the_buffering_group_leaves_no_key(
    client: aioredis.Redis, backend: RedisBackend
) -> None:
    manager = TransactionManager(backend)
    tx, _ = observation(1)
    with pytest.raises(RuntimeError, match="injected"):
        async with backend.atomic() as batch:
            batch.push(tx.to_json())
            batch.write_cache(tx.transaction_id, [], 60)
            raise RuntimeError("injected after staging")
    original = backend.atomic

    def failing_atomic():  # type: ignore[no-untyped-def]
        group = original()

        class Failing:
            async def __aenter__(self):  # type: ignore[no-untyped-def]
                batch = await group.__aenter__()
                stage = batch.write_cache

                def write_cache(*args, **kwargs):  # type: ignore[no-untyped-def]
                    stage(*args, **kwargs)
                    raise ConnectionError("injected: lost the connection while staging")

                batch.write_cache = write_cache
                return batch

            async def __aexit__(self, *exc):  # type: ignore[no-untyped-def]
                return await group.__aexit__(*exc)

        return Failing()

    backend.atomic = failing_atomic  # type: ignore[method-assign]
    with pytest.raises(ConnectionError, match="injected"):
        await manager.buffer(tx)
    assert await site_keys(client, backend) == {}


async def test_key_hygiene_over_a_full_life(client: aioredis.Redis, backend: RedisBackend) -> None:
    manager = TransactionManager(backend, status_ttl=1.0, cache_ttl=30.0)
    tx, obs_id = observation(1)
    await manager.buffer(tx)
    bounded = backend.keys.bounded()
    during = await site_keys(client, backend)
    assert any(obs_id in key for key in during), (obs_id, during)
    assert await untracked(backend, during) == []
    (delivery,) = await manager.claim(1, 30)
    await manager.committed([delivery], None)
    await manager.replicated([delivery.status])
    after = await site_keys(client, backend)
    assert await untracked(backend, after) == []
    assert not any(obs_id in key for key in after), after
    deadline = time.monotonic() + 10
    # site_keys reads each key's PTTL, which expires a key whose time has come
    # even on a busy server whose active expiry lags behind.
    while any(tx.transaction_id in key for key in await site_keys(client, backend)):
        assert time.monotonic() < deadline, await site_keys(client, backend)
        await asyncio.sleep(0.05)
    assert await manager.status(tx.transaction_id) is None
    left = await site_keys(client, backend)
    assert all(key in bounded for key in left), left
    for key in left:
        kind = (await client.type(key)).decode()
        size = {
            "list": client.llen,
            "hash": client.hlen,
            "zset": client.zcard,
        }.get(kind)
        if size is not None and not key.endswith(":seq"):
            assert await size(key) == 0 or key.endswith("state:replicated"), key


@pytest.mark.parametrize(
    "junk",
    [b"not json at all", b'{"format_version": 1, "endpoint": "x"', b"\xff\xfe\x00binary", b"{}"],
)
async def test_bad_data_in_the_queue_is_dead_lettered_raw(
    client: aioredis.Redis, backend: RedisBackend, junk: bytes
) -> None:
    manager = TransactionManager(backend)
    good, _ = observation(1)
    await client.lpush(backend.keys.buffer, junk)  # as an operator's redis-cli would
    await manager.buffer(good)
    deliveries = await manager.claim(10, 30)
    assert [d.transaction_id for d in deliveries] == [good.transaction_id]
    (letter,) = await backend.dead_letters.list()
    assert letter.letter_id.startswith("raw-") and letter.transaction_id is None
    assert "unreadable entry" in letter.reason
    raw = await client.hget(backend.keys.letters, letter.letter_id)
    assert raw == junk  # the bytes exactly as they were


async def test_each_unreadable_entry_is_logged_with_its_letter_id_and_counted(
    client: aioredis.Redis, backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    manager = TransactionManager(backend)
    await client.lpush(backend.keys.buffer, b"not json", b"{}")
    with caplog.at_level(logging.ERROR, logger="ccat_buffering.buffer.manager"):
        assert await manager.claim(10, 30) == []
    letters = {letter.letter_id for letter in await backend.dead_letters.list()}
    logged = [r.getMessage() for r in caplog.records if "dead-lettered entry" in r.getMessage()]
    assert len(logged) == 2 and all(any(lid in m for lid in letters) for m in logged)
    assert manager.unreadable == 2


async def test_the_size_limit_holds_at_drain_too(
    client: aioredis.Redis, backend: RedisBackend
) -> None:
    # Built by name, so that nothing checks the name's length before the drain.
    builder = TransactionBuilder("big")
    builder.create("RawDataPackage", {"executed_obs_unit_id": "o", "name": "x" * 5_000})
    big = builder.build()
    small, _ = observation(2)
    await TransactionManager(backend, max_payload_bytes=None).buffer(big)  # a laxer writer
    manager = TransactionManager(backend, max_payload_bytes=2_000)
    await manager.buffer(small)
    deliveries = await manager.claim(10, 30)
    assert [d.transaction_id for d in deliveries] == [small.transaction_id]
    letter = await backend.dead_letters.get(big.transaction_id)
    assert letter is not None and "over the limit of 2000" in letter.reason
    status = await backend.status.get(big.transaction_id)
    assert status is not None and status.state is TransactionState.FAILED
    assert await backend.cache.list("RawDataPackage") != []  # the small one's
    assert all(
        r.transaction_ids != (big.transaction_id,)
        for r in await backend.cache.list("RawDataPackage")
    )
    assert manager.unreadable == 1


async def test_a_status_key_deleted_by_hand_leaves_no_ghost_in_the_counts(
    client: aioredis.Redis, backend: RedisBackend
) -> None:
    manager = TransactionManager(backend)
    txs = [observation(i)[0] for i in range(3)]
    for tx in txs:
        await manager.buffer(tx)
    await client.delete(backend.keys.status(txs[1].transaction_id))
    counts = await backend.status.counts()
    assert counts[TransactionState.BUFFERED] == 2
    assert await backend.status.ids(TransactionState.BUFFERED) == [
        txs[0].transaction_id,
        txs[2].transaction_id,
    ]


async def test_from_url_owns_its_client_and_masks_the_password(client: aioredis.Redis) -> None:
    site = new_site_name()
    async with RedisBackend.from_url(REDIS_URL, site=site) as owned:
        await owned.buffer.push(["x"])
        assert (await owned.buffer.stats()).depth == 1
    await client.delete(SiteKeys(site).buffer)
    guarded = RedisBackend.from_url("redis://:s3cret@127.0.0.1:1/0", site=site)
    with pytest.raises(BackendUnavailableError) as caught:
        await guarded.buffer.stats()
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)
    await guarded.aclose()


async def test_simulate_on_redis(client: aioredis.Redis) -> None:
    summary = await simulate(200, poison=2, backend_url=REDIS_URL, keep=True)
    assert summary.ok, summary
    assert (summary.lost, summary.applied_twice, summary.dead_lettered) == (0, 0, 2)
    # With keep=True the site stays for `ccat-buffering status`: its dead letters are there.
    letters = await RedisBackend(client, site=summary.site).dead_letters.list()
    assert len(letters) == 2
    await forget_site(client, SiteKeys(summary.site).pattern())
    # Without it, the run deletes every key of its site.
    gone = await simulate(20, poison=0, backend_url=REDIS_URL)
    assert not [
        key async for key in client.scan_iter(match=SiteKeys(gone.site).pattern(), count=1000)
    ]


async def test_status_is_kept_until_terminal_then_expires(
    client: aioredis.Redis, backend: RedisBackend
) -> None:
    manager = TransactionManager(backend, status_ttl=1.0)
    tx, _ = observation(1)
    await manager.buffer(tx)
    key = backend.keys.status(tx.transaction_id)
    assert await client.pttl(key) == -1
    (delivery,) = await manager.claim(1, 30)
    (status,) = await manager.committed([delivery], None)
    assert await client.pttl(key) == -1
    await manager.replicated([status])
    assert 0 < await client.pttl(key) <= 1000
    got = await manager.status(tx.transaction_id)
    assert got is not None and got.state is TransactionState.REPLICATED


async def test_a_record_with_many_fields_is_written_whole(backend: RedisBackend) -> None:
    fields = {f"f{i}": i for i in range(10_000)}
    await backend.cache.write("t1", [CacheWrite("Wide", "r1", CacheKind.CREATE, fields)], 60)
    record = await backend.cache.get("Wide", "r1")
    assert record is not None and dict(record.fields) == fields


async def test_a_malformed_group_is_refused_whole_and_alone(
    client: aioredis.Redis, backend: RedisBackend
) -> None:
    def push(entry: str) -> Command:
        return Command("push" + SEP, 1, (entry,))

    odd_kind = Command(SEP.join(["cache", "t1", "1000", "1", "M", "r1", "odd", "a=1"]) + SEP, 8)
    groups = [[push("entry-1")], [push("entry-2"), odd_kind], [push("entry-3")]]
    results = await backend._apply_groups(groups)
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], BackendError) and "malformed" in str(results[1])
    # The refused group's entry is not written; the next group's blobs still line up.
    assert await client.lrange(backend.keys.buffer, 0, -1) == [b"entry-3", b"entry-1"]
    assert not await client.exists(backend.keys.buffered("M", "r1"), backend.keys.status("t1"))


async def test_concurrent_callers_are_coalesced_yet_each_applies_whole(
    client: aioredis.Redis, backend: RedisBackend
) -> None:
    manager = TransactionManager(backend)
    txs = [observation(i)[0] for i in range(64)]
    calls = 0
    run = backend._apply_groups

    async def counting(groups):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return await run(groups)

    backend._coalescer._run = counting  # type: ignore[union-attr]
    statuses = await asyncio.gather(*(manager.buffer(tx) for tx in txs))
    assert [s.transaction_id for s in statuses] == [tx.transaction_id for tx in txs]
    assert calls < len(txs)  # fewer round trips than callers
    assert (await backend.buffer.stats()).depth == 64
    counts = await backend.status.counts()
    assert counts[TransactionState.BUFFERED] == 64
    assert len(await backend.cache.list("ExecutedObsUnit")) == 64


async def test_operator_capabilities(client: aioredis.Redis, backend: RedisBackend) -> None:
    from ccat_buffering.buffer.protocols import (
        SupportsInspection,
        SupportsKeyAudit,
        SupportsProcessorReports,
    )

    assert isinstance(backend, SupportsInspection) and isinstance(backend, SupportsKeyAudit)
    assert isinstance(backend.lease, SupportsProcessorReports)
    manager = TransactionManager(backend)
    waiting, obs_id = observation(1)
    claimed, _ = observation(2)
    await manager.buffer_many([claimed, waiting])
    await manager.claim(1, 60)
    assert (await backend.find_payload(waiting.transaction_id) or "").find(obs_id) > 0
    assert await backend.find_payload(claimed.transaction_id) is not None  # in flight
    assert await backend.find_payload("00000000-0000-0000-0000-000000000000") is None
    keys = await backend.transaction_keys(
        waiting.transaction_id, [("ExecutedObsUnit", obs_id), ("RawDataPackage", "nope")]
    )
    prefix = backend.keys.prefix
    kinds = {info.key[len(prefix) :].split(":")[0]: info for info in keys}
    assert kinds["transaction"].ttl_seconds is None  # unfinished: no TTL
    assert kinds["buffered"].ttl_seconds
    assert "cache" not in kinds  # its creator is the record's first: no ID-cache key
    assert await backend.audit_keys() == []
    await client.set(backend.keys.prefix + "stray", "left by hand")
    (leak,) = await backend.audit_keys()
    assert leak.key.endswith(":stray") and leak.ttl_seconds is None
    warning = await backend.persistence_warning()
    appendonly = (await client.config_get("appendonly"))["appendonly"]
    assert (warning is not None) == (appendonly == "no")
    await backend.lease.publish_report('{"state": "running"}', 5)
    assert await backend.lease.processor_report() == '{"state": "running"}'


async def test_compressed_entries_are_stored_small_and_read_as_text(
    client: aioredis.Redis, backend: RedisBackend
) -> None:
    plain = TransactionManager(backend)
    squeezed_backend = RedisBackend(client, site=backend.site, compression="zlib")
    squeezed = TransactionManager(squeezed_backend)
    first, _ = observation(1)
    second, _ = observation(2)
    await plain.buffer(first)  # stored before compression was turned on
    await squeezed.buffer(second)
    stored = await client.lrange(backend.keys.buffer, 0, -1)
    assert stored[-1] == first.to_json().encode()
    assert stored[0].startswith(MARKER) and len(stored[0]) < len(second.to_json()) * 0.7
    # Every reader gives back the text: claims (either backend), inspection, dead letters.
    assert await squeezed_backend.find_payload(second.transaction_id) == second.to_json()
    deliveries = await squeezed.claim(10, 30)
    assert [d.transaction for d in deliveries] == [first, second]
    await squeezed.failed([(deliveries[1], ValueError("bad"), FailureKind.PERMANENT)])
    raw_letter = await client.hget(backend.keys.letters, second.transaction_id)
    assert raw_letter is not None and raw_letter.startswith(MARKER)
    (letter,) = await plain.backend.dead_letters.list()
    assert letter.payload == second.to_json()
    # Replay moves the stored bytes back as they are; the next claim reads them again.
    assert await squeezed.replay() == [second.transaction_id]
    (again,) = await plain.claim(10, 30)
    assert again.transaction == second


async def test_a_marked_entry_that_does_not_decompress_is_dead_lettered_raw(
    client: aioredis.Redis, backend: RedisBackend
) -> None:
    junk = MARKER + b"not a zlib stream"
    await client.lpush(backend.keys.buffer, junk)
    manager = TransactionManager(RedisBackend(client, site=backend.site, compression="zlib"))
    assert await manager.claim(10, 30) == []
    (letter,) = await backend.dead_letters.list()
    assert "unreadable entry" in letter.reason
    assert await client.hget(backend.keys.letters, letter.letter_id) == junk


async def test_compression_is_chosen_in_the_url_and_checked(client: aioredis.Redis) -> None:
    site = new_site_name()
    async with RedisBackend.from_url(f"{REDIS_URL}?compression=zlib", site=site) as owned:
        assert owned.compression == "zlib"
        await owned.buffer.push(['{"x": 1}'])
        (raw,) = await client.lrange(owned.keys.buffer, 0, -1)
        assert raw.startswith(MARKER)
        (claim,) = await owned.buffer.claim(1, 30)
        assert claim.payload == '{"x": 1}'
        await forget_site(client, owned.keys.pattern())
    async with RedisBackend.from_url(REDIS_URL, site=site, compression="zlib") as keyword:
        assert keyword.compression == "zlib"
    with pytest.raises(ConfigurationError, match="unknown compression 'lz4'"):
        RedisBackend.from_url(f"{REDIS_URL}?compression=lz4", site=site)
    with pytest.raises(ConfigurationError, match="unknown compression 'gzip'"):
        RedisBackend(client, site=site, compression="gzip")


@pytest.mark.parametrize(
    ("url", "rest", "compression"),
    [
        ("unix:///run/redis.sock?db=2&compression=zlib", "unix:///run/redis.sock?db=2", "zlib"),
        ("redis://h:1/0?compression=zlib", "redis://h:1/0", "zlib"),
        ("redis://h:1/0?socket_timeout=2", "redis://h:1/0?socket_timeout=2", None),
        ("redis://h:1/0", "redis://h:1/0", None),
    ],
)
def test_the_compression_parameter_is_taken_off_the_url_and_nothing_else(
    url: str, rest: str, compression: str | None
) -> None:
    assert take_compression(url) == (rest, compression)


def _buffering_group(tx: Transaction) -> list[Command]:
    batch = RedisWriteBatch()
    batch.push(tx.to_json())
    batch.put_status(TransactionStatus(transaction_id=tx.transaction_id, state="buffered"), 60)
    batch.write_cache(tx.transaction_id, cache_writes(tx), 60)
    return batch.ops


async def test_a_record_key_of_the_wrong_type_is_replaced_and_the_group_applies_whole(
    client: aioredis.Redis, backend: RedisBackend
) -> None:
    # A hand-written key where a record goes: it is replaced, not merged into.
    await client.hset(backend.keys.buffered("M", "r1"), "a", "1")
    before, after = observation(1)[0], observation(2)[0]
    odd = RedisWriteBatch()
    odd.push("entry-of-the-odd-group")
    odd.put_status(TransactionStatus(transaction_id="t-odd", state="buffered"), 60)
    odd.write_cache("t-odd", [CacheWrite("M", "r1", CacheKind.UPDATE, {"a": 2})], 60)
    results = await backend._apply_groups(
        [_buffering_group(before), odd.ops, _buffering_group(after)]
    )
    assert results == [1, 1, 1]
    record = await backend.cache.get("M", "r1")
    assert record is not None and record.fields == {"a": 2}
    assert record.transaction_ids == ("t-odd",)
    assert await client.llen(backend.keys.buffer) == 3


@pytest.mark.parametrize("structure", ["index", "state", "buffer"])
async def test_a_structure_of_the_wrong_type_refuses_its_group_whole_and_alone(
    client: aioredis.Redis, backend: RedisBackend, structure: str
) -> None:
    before, after = observation(1)[0], observation(2)[0]
    bad = RedisWriteBatch()
    if structure == "index":
        await client.set(backend.keys.index("Broken"), "by hand")
        bad.push("entry-of-the-bad-group")
        bad.put_status(TransactionStatus(transaction_id="t-bad", state="buffered"), 60)
        bad.write_cache("t-bad", [CacheWrite("Broken", "r1", CacheKind.CREATE, {"a": 2})], 60)
        groups = [_buffering_group(before), bad.ops, _buffering_group(after)]
    elif structure == "state":
        await client.set(backend.keys.state(TransactionState.RETRYING), "by hand")
        bad.put_status(TransactionStatus(transaction_id="t-bad", state="retrying"), 60)
        groups = [_buffering_group(before), bad.ops, _buffering_group(after)]
    else:
        await client.set(backend.keys.buffer, "by hand")
        bad.push("entry-of-the-bad-group")
        groups = [bad.ops]
    results = await backend._apply_groups(groups)
    refused = [r for r in results if isinstance(r, BackendError)]
    assert len(refused) == 1 and "is a string, not a" in str(refused[0])
    assert await backend.status.get("t-bad") is None
    assert await backend.cache.get("Broken", "r1") is None
    if structure == "state":
        # A status that leaves a broken index is refused too.
        await client.delete(backend.keys.state(TransactionState.RETRYING))
        await backend.status.put(TransactionStatus(transaction_id="t-odd", state="retrying"), 60)
        await client.set(backend.keys.state(TransactionState.RETRYING), "by hand")
        leaving = RedisWriteBatch()
        leaving.put_status(TransactionStatus(transaction_id="t-odd", state="buffered"), 60)
        (result,) = await backend._apply_groups([leaving.ops])
        assert isinstance(result, BackendError) and "state:retrying" in str(result)
    if structure != "buffer":
        assert results[0] == 1 and results[2] == 1
        stored = await client.lrange(backend.keys.buffer, 0, -1)
        assert stored == [after.to_json().encode(), before.to_json().encode()]
        assert len(await backend.cache.list("ExecutedObsUnit")) == 2


async def test_compression_needs_a_client_that_returns_bytes() -> None:
    decoding = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses"):
            RedisBackend(decoding, site=new_site_name(), compression="zlib")
    finally:
        await decoding.aclose()


async def test_a_group_cancelled_after_it_was_handed_to_a_call_is_not_sent() -> None:
    sent: list[list[list[Command]]] = []

    async def run(groups: list[list[Command]]) -> list[int | BackendError]:
        sent.append(groups)
        return [1] * len(groups)

    coalescer = Coalescer(run)
    loop = asyncio.get_running_loop()
    cancelled: asyncio.Future[int] = loop.create_future()
    kept: asyncio.Future[int] = loop.create_future()
    one, two = [Command("push" + SEP, 1, ("a",))], [Command("push" + SEP, 1, ("b",))]
    coalescer._pending += [(one, cancelled), (two, kept)]
    coalescer._start()  # both handed to one call, which has not started yet
    cancelled.cancel()
    assert await kept == 1
    assert sent == [[two]]
