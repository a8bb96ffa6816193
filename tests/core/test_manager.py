"""TransactionManager: atomic buffering, statuses, caches, retries and dead letters."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccat_buffering.buffer.cache_writes import cache_writes, record_id
from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.protocols import CacheKind
from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.errors import (
    PayloadTooLargeError,
    TransactionValidationError,
    UnknownColumnError,
    UnknownModelError,
)
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import TransactionState
from ccat_buffering_memory import MemoryBackend

from support import FakeClock, memory_sqlite_site, observation


async def _everything(backend: MemoryBackend) -> tuple[int, dict[TransactionState, int], int]:
    stats = await backend.buffer.stats()
    counts = await backend.status.counts()
    cached = len(await backend.cache.list("ExecutedObsUnit")) + len(
        await backend.cache.list("RawDataPackage")
    )
    return stats.depth, counts, cached


async def test_buffer_writes_queue_status_and_caches(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        tx, obs_id = observation(1)
        status = await site.manager.buffer(tx)
        assert status.state is TransactionState.BUFFERED
        assert status.attempts == 0
        assert (await site.manager.status(tx.transaction_id)) == status
        stats = await site.backend.buffer.stats()
        assert stats.depth == 1
        record = await site.manager.cached_record("ExecutedObsUnit", obs_id)
        assert record is not None and record["status"] == "running"
        assert await site.backend.cache.created_by("ExecutedObsUnit", obs_id) == tx.transaction_id


async def test_invalid_transaction_writes_nothing(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        before = await _everything(site.backend)
        unknown_model = TransactionBuilder("x")
        unknown_model.create("Telescope", {"name": "primary"})
        with pytest.raises(UnknownModelError, match="Telescope"):
            await site.manager.buffer(unknown_model.build())
        unknown_column = TransactionBuilder("x")
        unknown_column.create("ExecutedObsUnit", {"colour": "red"})
        with pytest.raises(UnknownColumnError, match="colour"):
            await site.manager.buffer(unknown_column.build())
        with pytest.raises(TransactionValidationError, match="expected a Transaction"):
            await site.manager.buffer({"endpoint": "x"})  # type: ignore[arg-type]
        assert await _everything(site.backend) == before


async def test_payload_limit_is_checked_before_writing() -> None:
    backend = MemoryBackend(new_site_name())
    manager = TransactionManager(backend, max_payload_bytes=2000)
    tx = TransactionBuilder("big", max_payload_bytes=None)
    tx.create("Note", {"text": "x" * 5000})
    with pytest.raises(PayloadTooLargeError, match="over the limit of 2000"):
        await manager.buffer(tx.build())
    assert (await backend.buffer.stats()).depth == 0


async def test_buffer_many_is_all_or_nothing(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        good, _ = observation(1)
        bad = TransactionBuilder("x")
        bad.create("Nope", {"a": 1})
        with pytest.raises(UnknownModelError):
            await site.manager.buffer_many([good, bad.build()])
        depth, counts, cached = await _everything(site.backend)
        assert (depth, sum(counts.values()), cached) == (0, 0, 0)


async def test_failure_inside_the_atomic_group_leaves_nothing() -> None:
    class Exploding(MemoryBackend):
        def atomic(self):  # type: ignore[no-untyped-def]
            inner = super().atomic()

            class Group:
                async def __aenter__(self):  # type: ignore[no-untyped-def]
                    batch = await inner.__aenter__()
                    original = batch.write_cache

                    def write_cache(*args, **kwargs):  # type: ignore[no-untyped-def]
                        original(*args, **kwargs)
                        raise ConnectionError("injected: the cache write failed")

                    batch.write_cache = write_cache
                    return batch

                async def __aexit__(self, *exc):  # type: ignore[no-untyped-def]
                    return await inner.__aexit__(*exc)

            return Group()

    backend = Exploding(new_site_name())
    manager = TransactionManager(backend)
    tx, obs_id = observation(1)
    with pytest.raises(ConnectionError, match="injected"):
        await manager.buffer(tx)
    assert (await backend.buffer.stats()).depth == 0
    assert await backend.status.get(tx.transaction_id) is None
    assert await backend.cache.get("ExecutedObsUnit", obs_id) is None


def test_cache_writes_follow_the_steps() -> None:
    tx = TransactionBuilder("finish")
    obs = tx.create("ExecutedObsUnit", {"status": "running"})
    tx.update("ExecutedObsUnit", obs.id, {"status": "done", "obs_unit_id": obs.ref("obs_unit_id")})
    tx.delete("RawDataPackage", "p-1")
    tx.bulk_create("RawDataFile", [{"id": "f-1", "path": "/a"}])
    tx.bulk_update("RawDataFile", [{"id": "f-1", "path": "/b"}])
    writes = cache_writes(tx.build())
    assert [(w.model, w.kind) for w in writes] == [
        ("ExecutedObsUnit", CacheKind.CREATE),
        ("ExecutedObsUnit", CacheKind.UPDATE),
        ("RawDataPackage", CacheKind.DELETE),
        ("RawDataFile", CacheKind.CREATE),
        ("RawDataFile", CacheKind.UPDATE),
    ]
    # A ref() is known only to the database: it is not cached.
    assert dict(writes[1].fields) == {"status": "done"}


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("NGC 1333", "NGC%201333"),
        ("IRAS16293-2422:A", "IRAS16293-2422%3AA"),
        ("jdoe@example.org", "jdoe%40example.org"),
        ("a*{b}", "a%2A%7Bb%7D"),
        ("Ωmega", "%CE%A9mega"),
        ("100%", "100%25"),
        ("plain-id_1.2", "plain-id_1.2"),
    ],
)
def test_natural_keys_are_encoded_inside_the_key_schema(key: str, text: str) -> None:
    tx = TransactionBuilder("x")
    tx.update("ExecutedObsUnit", key, {"status": "done"})
    assert cache_writes(tx.build())[0].record_id == text


def test_composite_parts_holding_the_separator_stay_apart() -> None:
    assert record_id({"a": "x,y", "b": "z"}, ["a", "b"]) == "x%2Cy,z"
    assert record_id({"a": "x", "b": "y,z"}, ["a", "b"]) == "x,y%2Cz"


def test_record_ids_too_long_for_a_cache_key_are_refused() -> None:
    tx = TransactionBuilder("x")
    tx.update("ExecutedObsUnit", "Ω" * 700, {"status": "done"})
    with pytest.raises(TransactionValidationError, match="cannot name a cache entry"):
        cache_writes(tx.build())


async def test_unreadable_entry_is_dead_lettered_with_its_raw_text() -> None:
    backend = MemoryBackend(new_site_name())
    manager = TransactionManager(backend)
    good, _ = observation(1)
    await backend.buffer.push(['{"truncated": '])
    await manager.buffer(good)
    deliveries = await manager.claim(10, 30)
    assert [d.transaction_id for d in deliveries] == [good.transaction_id]
    letters = await backend.dead_letters.list()
    assert len(letters) == 1
    assert letters[0].payload == '{"truncated": '
    assert letters[0].transaction_id is None
    assert "unreadable entry" in letters[0].reason


async def test_data_errors_retry_in_place_then_dead_letter(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path, max_attempts=3) as site:
        first, _ = observation(1)
        second, _ = observation(2)
        await site.manager.buffer_many([first, second])
        error = ValueError("constraint")
        for attempt in (1, 2):
            (delivery,) = await site.manager.claim(1, 30)
            assert delivery.transaction_id == first.transaction_id  # keeps its place
            (status,) = await site.manager.failed([(delivery, error, FailureKind.DATA)])
            assert status.state is TransactionState.RETRYING
            assert status.attempts == attempt
            stats = await site.backend.buffer.stats()
            assert stats.held_until is not None
            assert await site.manager.claim(1, 30) == []  # the head is held
            site.clock.advance(site.manager.retry_policy.ceiling(attempt) + 0.001)
        (delivery,) = await site.manager.claim(1, 30)
        (status,) = await site.manager.failed([(delivery, error, FailureKind.DATA)])
        assert status.state is TransactionState.FAILED
        assert status.attempts == 3
        assert "ValueError: constraint" in (status.last_error or "")
        (letter,) = await site.backend.dead_letters.list()
        assert letter.letter_id == first.transaction_id
        # The queue moves on, and the failed write is no longer shown at the site.
        (next_delivery,) = await site.manager.claim(1, 30)
        assert next_delivery.transaction_id == second.transaction_id
        assert await site.backend.cache.list("RawDataPackage") != []
        names = [r.fields["name"] for r in await site.backend.cache.list("RawDataPackage")]
        assert names == ["pkg-2"]


async def test_permanent_errors_dead_letter_at_once() -> None:
    backend = MemoryBackend(new_site_name())
    manager = TransactionManager(backend)
    tx, _ = observation(1)
    await manager.buffer(tx)
    (delivery,) = await manager.claim(1, 30)
    (status,) = await manager.failed([(delivery, UnknownModelError("gone"), FailureKind.PERMANENT)])
    assert status.state is TransactionState.FAILED
    assert status.attempts == 0
    assert (await backend.buffer.stats()).dead_letters == 1


async def test_retried_transactions_keep_their_order() -> None:
    clock = FakeClock()
    backend = MemoryBackend(new_site_name(), clock=clock)
    manager = TransactionManager(backend)
    txs = [observation(i)[0] for i in range(4)]
    await manager.buffer_many(txs)
    deliveries = await manager.claim(4, 30)
    failures = [(d, ValueError("x"), FailureKind.DATA) for d in deliveries[1:3]]
    await manager.committed([deliveries[0], deliveries[3]], None)
    await manager.failed(failures)
    clock.advance(3600)
    again = await manager.claim(10, 30)
    assert [d.transaction_id for d in again] == [txs[1].transaction_id, txs[2].transaction_id]


async def test_outage_pause_counts_no_attempt() -> None:
    backend = MemoryBackend(new_site_name())
    manager = TransactionManager(backend)
    txs = [observation(i)[0] for i in range(3)]
    await manager.buffer_many(txs)
    for _ in range(5):
        deliveries = await manager.claim(3, 30)
        await manager.paused(deliveries, "database unreachable: refused")
    statuses = [await manager.status(tx.transaction_id) for tx in txs]
    assert all(s is not None and s.attempts == 0 for s in statuses)
    assert all(s is not None and s.state is TransactionState.BUFFERED for s in statuses)
    assert (await backend.buffer.stats()).dead_letters == 0
    again = await manager.claim(3, 30)
    assert [d.transaction_id for d in again] == [tx.transaction_id for tx in txs]


async def test_replay_restores_status_caches_and_order() -> None:
    backend = MemoryBackend(new_site_name())
    manager = TransactionManager(backend)
    txs = [observation(i)[0] for i in range(3)]
    await manager.buffer_many(txs)
    deliveries = await manager.claim(3, 30)
    await manager.failed([(d, UnknownModelError("x"), FailureKind.PERMANENT) for d in deliveries])
    assert await backend.cache.list("ExecutedObsUnit") == []
    replayed = await manager.replay([txs[2].transaction_id, txs[0].transaction_id])
    assert replayed == [txs[0].transaction_id, txs[2].transaction_id]
    status = await manager.status(txs[0].transaction_id)
    assert status is not None and status.state is TransactionState.BUFFERED
    assert status.attempts == 0
    assert len(await backend.cache.list("ExecutedObsUnit")) == 2
    again = await manager.claim(3, 30)
    assert [d.transaction_id for d in again] == [txs[0].transaction_id, txs[2].transaction_id]
    assert [letter.letter_id for letter in await backend.dead_letters.list()] == [
        txs[1].transaction_id
    ]
