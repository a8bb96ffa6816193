"""The contract of :meth:`~ccat_buffering.buffer.protocols.Backend.atomic`."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

import pytest

from ccat_buffering.buffer.protocols import (
    Backend,
    CacheKind,
    CacheWrite,
    SupportsReplicatedMoves,
    SupportsStatusBatches,
    WriteBatch,
)
from ccat_buffering.testing._base import LONG_LEASE, ContractHooks
from ccat_buffering.testing._cache import create, update
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import TransactionState, TransactionStatus
from ccat_buffering.write.status import copied_status, made_event

__all__ = ["AtomicContract"]

_STATUS = TransactionStatus(transaction_id="tx-bad", state=TransactionState.BUFFERED)
_WRITE = CacheWrite("Observation", "r9", CacheKind.CREATE, {"a": 1})
_BAD_MODEL = CacheWrite("Observation:*", "r9", CacheKind.CREATE, {"a": 1})
_NOT_A_STATUS: Any = {"transaction_id": "tx-bad", "state": "buffered"}
_NOT_TEXT: Any = b"bytes"

_BAD_STAGING: dict[str, Callable[[WriteBatch], None]] = {
    "push-not-text": lambda batch: batch.push(_NOT_TEXT),
    "put_status-not-a-status": lambda batch: batch.put_status(_NOT_A_STATUS, 60.0),
    "put_status-negative-ttl": lambda batch: batch.put_status(_STATUS, -1.0),
    "put_status-nan-ttl": lambda batch: batch.put_status(_STATUS, math.nan),
    "write_cache-bad-model": lambda batch: batch.write_cache("tx-bad", [_BAD_MODEL], 60.0),
    "write_cache-negative-ttl": lambda batch: batch.write_cache("tx-bad", [_WRITE], -1.0),
    "retry_later-negative-delay": lambda batch: batch.retry_later(["1"], -1.0),
    "retry_later-nan-delay": lambda batch: batch.retry_later(["1"], math.nan),
}


class _Boom(Exception):
    pass


class AtomicContract(ContractHooks):
    """Atomic groups: invisible until the block exits, then all applied or none."""

    def stage_group(self, batch: WriteBatch, status: TransactionStatus) -> None:
        """Stage a push, a status and a cache write, as ``buffer()`` does."""
        batch.push("payload")
        batch.put_status(status, 60.0)
        batch.write_cache(
            status.transaction_id,
            [CacheWrite("Observation", "r1", CacheKind.CREATE, {"a": 1})],
            60.0,
        )

    async def assert_nothing_applied(self, backend: Backend, status: TransactionStatus) -> None:
        """Check that no write of :meth:`stage_group` is visible."""
        assert (await backend.buffer.stats()).depth == 0
        assert await backend.status.get(status.transaction_id) is None
        assert await backend.status.ids(status.state) == []
        assert await backend.cache.get("Observation", "r1") is None
        assert await backend.cache.list("Observation") == []

    async def test_atomic_staged_writes_invisible_until_exit(self, backend: Backend) -> None:
        """Staged writes are not visible inside the block and all are visible after it."""
        status = self.make_status()
        async with backend.atomic() as batch:
            self.stage_group(batch, status)
            await self.assert_nothing_applied(backend, status)
        assert await self.drain(backend) == ["payload"]
        assert await backend.status.get(status.transaction_id) == status
        record = await backend.cache.get("Observation", "r1")
        assert record is not None
        assert record.transaction_ids == (status.transaction_id,)
        assert await backend.cache.created_by("Observation", "r1") == status.transaction_id

    async def test_atomic_applies_in_order_staged(self, backend: Backend) -> None:
        """Staged writes apply in the order they were staged."""
        status = self.make_status()
        later = status.advance(TransactionState.PROCESSING)
        async with backend.atomic() as batch:
            batch.push("a")
            batch.push("b")
            batch.put_status(status, 60.0)
            batch.put_status(later, 60.0)
            batch.write_cache("t1", [create("r1", a=1)], 60)
            batch.write_cache("t2", [update("r1", a=2)], 60)
        assert await self.drain(backend) == ["a", "b"]
        assert await backend.status.get(status.transaction_id) == later
        record = await backend.cache.get("Observation", "r1")
        assert record is not None
        assert (dict(record.fields), record.transaction_ids) == ({"a": 2}, ("t1", "t2"))

    async def test_atomic_put_statuses_is_put_status_of_each(self, backend: Backend) -> None:
        """A batch with ``put_statuses`` stages what ``put_status`` of each would, in order."""
        states = TransactionState
        lsn = LSN(0x1_0000_0020)
        shapes: list[dict[str, Any]] = [
            {"state": states.PROCESSING},
            {"state": states.PROCESSING},
            {"state": states.PROCESSING, "attempts": 2},
            {"state": states.RETRYING, "attempts": 1, "last_error": "boom"},
            {"state": states.COMMITTED, "commit_lsn": lsn},
            {"state": states.COMMITTED, "commit_lsn": lsn, "generated": {"s": {"id": 1}}},
            {"state": states.COMMITTED},
            {"state": states.REPLICATED, "commit_lsn": lsn},
        ]
        batched = [self.make_status(**shape) for shape in shapes]
        batched[1] = batched[1].model_copy(update={"endpoint": "other"})
        batched[3] = batched[3].model_copy(
            update={"history": (made_event(batched[3].created_at, "retrying", "boom"),)}
        )
        single = [
            s.model_copy(update={"transaction_id": "one-" + s.transaction_id}) for s in batched
        ]
        async with backend.atomic() as batch:
            if not isinstance(batch, SupportsStatusBatches):
                pytest.skip("the backend's write batch has no put_statuses")
            batch.put_statuses(batched, 60.0)
            for status in single:
                batch.put_status(status, 60.0)
        assert await backend.status.get_many([s.transaction_id for s in batched]) == batched
        assert await backend.status.get_many([s.transaction_id for s in single]) == single
        for state in {s.state for s in batched}:
            ids = await backend.status.ids(state)
            assert [i for i in ids if i.startswith("one-")] == [
                "one-" + i for i in ids if not i.startswith("one-")
            ]

    async def test_atomic_nothing_applied_when_block_raises(self, backend: Backend) -> None:
        """When the block raises, its error propagates and nothing staged applies."""
        status = self.make_status()
        with pytest.raises(_Boom):
            async with backend.atomic() as batch:
                self.stage_group(batch, status)
                raise _Boom
        await self.assert_nothing_applied(backend, status)

    @pytest.mark.parametrize("stage_bad", _BAD_STAGING.values(), ids=_BAD_STAGING.keys())
    async def test_atomic_bad_staging_raises_at_once(
        self, backend: Backend, stage_bad: Callable[[WriteBatch], None]
    ) -> None:
        """A staging call with bad arguments raises at once, and nothing of the group applies."""
        status = self.make_status()
        reached = False
        with pytest.raises((TypeError, ValueError)):
            async with backend.atomic() as batch:
                self.stage_group(batch, status)
                stage_bad(batch)
                reached = True
        assert not reached, "the bad staging call did not raise at once"
        await self.assert_nothing_applied(backend, status)

    async def test_atomic_ack_retry_and_dead_letter(self, backend: Backend) -> None:
        """Staged ack, retry and dead-letter apply together."""
        await backend.buffer.push(["a", "b", "c"])
        first, second, third = await backend.buffer.claim(3, LONG_LEASE)
        async with backend.atomic() as batch:
            batch.ack(first.receipt)
            batch.retry_later([second.receipt], 0)
            batch.dead_letter(third.receipt, "boom", "tx-c")
            assert (await backend.buffer.stats()).in_flight == 3
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.dead_letters) == (1, 0, 1)
        letter = await backend.dead_letters.get("tx-c")
        assert letter is not None
        assert (letter.payload, letter.reason) == ("c", "boom")
        assert await self.drain(backend) == ["b"]

    async def test_atomic_retry_later_holds_the_head(self, backend: Backend) -> None:
        """A staged retry with a delay holds the head as the store method does."""
        await backend.buffer.push(["a"])
        (claim,) = await backend.buffer.claim(1, LONG_LEASE)
        async with backend.atomic() as batch:
            batch.retry_later([claim.receipt], 60.0)
        stats = await backend.buffer.stats()
        self.assert_time(stats.held_until, self.now() + 60.0, "held_until")
        assert await backend.buffer.claim(1, LONG_LEASE) == []

    async def test_atomic_replay(self, backend: Backend) -> None:
        """A staged replay moves the letter to the head with its status."""
        await backend.buffer.push(["a"])
        (claim,) = await backend.buffer.claim(1, LONG_LEASE)
        await backend.buffer.dead_letter(claim.receipt, "boom", "tx-a")
        await backend.buffer.push(["b"])
        status = self.make_status(TransactionState.BUFFERED, "tx-a")
        async with backend.atomic() as batch:
            batch.replay("tx-a")
            batch.put_status(status, 60.0)
            assert await backend.dead_letters.get("tx-a") is not None
        assert await backend.dead_letters.get("tx-a") is None
        assert await backend.status.get("tx-a") == status
        assert await self.drain(backend) == ["a", "b"]

    async def test_atomic_replays_the_last_staged_first(self, backend: Backend) -> None:
        """Each staged replay goes to the head: the one staged last is claimed first."""
        for payload, tx in (("a", "tx-a"), ("b", "tx-b")):
            await backend.buffer.push([payload])
            (claim,) = await backend.buffer.claim(1, LONG_LEASE)
            await backend.buffer.dead_letter(claim.receipt, "boom", tx)
        await backend.buffer.push(["c"])
        async with backend.atomic() as batch:
            batch.replay("tx-b")
            batch.replay("tx-a")
        assert await self.drain(backend) == ["a", "b", "c"]

    async def test_atomic_release_cache(self, backend: Backend) -> None:
        """A staged release drops what the transaction wrote, on exit."""
        write = CacheWrite("Observation", "r1", CacheKind.CREATE, {"a": 1})
        await backend.cache.write("t1", [write], 60.0)
        async with backend.atomic() as batch:
            batch.release_cache(["t1"])
            assert await backend.cache.get("Observation", "r1") is not None
        assert await backend.cache.get("Observation", "r1") is None
        assert await backend.cache.created_by("Observation", "r1") is None

    async def test_atomic_replicate_moves_routine_committed_statuses(
        self, backend: Backend
    ) -> None:
        """``replicate`` writes what ``put_status`` of each routine move would, then releases."""
        async with backend.atomic() as batch:
            if not isinstance(batch, SupportsReplicatedMoves):
                pytest.skip("the backend's write batch has no replicate")
        states = TransactionState
        created = dt.datetime(2026, 12, 1, 8, 0, 0, 123456, tzinfo=dt.UTC)
        committed = created + dt.timedelta(seconds=2, microseconds=5)
        at = created + dt.timedelta(seconds=3, microseconds=77)
        times: dict[str, Any] = {"created_at": created, "updated_at": committed}
        lsn = LSN(0x1_0000_0020)
        routine = self.make_status(
            states.COMMITTED, commit_lsn=lsn, committed_at=committed, **times
        )
        no_lsn = self.make_status(states.COMMITTED, attempts=2, **times)
        noted = self.make_status(
            states.COMMITTED,
            commit_lsn=lsn,
            history=(made_event(committed, "noted", "by hand"),),
            **times,
        )
        generated = self.make_status(
            states.COMMITTED, commit_lsn=lsn, generated={"s": {"id": 1}}, **times
        )
        staged = self.make_status(states.COMMITTED, commit_lsn=lsn, **times)
        everyone = [routine, no_lsn, noted, generated, staged]
        for status in everyone:
            await backend.status.put(status, 600.0)
        write = CacheWrite("Observation", "r1", CacheKind.CREATE, {"a": 1})
        await backend.cache.write(routine.transaction_id, [write], 60.0)
        own = copied_status(staged, {"state": states.FAILED, "last_error": "staged"})
        async with backend.atomic() as batch:
            assert isinstance(batch, SupportsReplicatedMoves)
            batch.put_status(own, 600.0)
            batch.replicate([s.transaction_id for s in everyone], at, 600.0)
            assert await backend.status.get(routine.transaction_id) == routine
        moved = {"state": states.REPLICATED, "updated_at": at, "replicated_at": at}
        assert await backend.status.get_many([s.transaction_id for s in everyone]) == [
            copied_status(routine, moved),
            copied_status(no_lsn, moved),
            noted,
            generated,
            own,
        ]
        assert await backend.cache.get("Observation", "r1") is None
        replicated = await backend.status.ids(states.REPLICATED)
        assert sorted(replicated) == sorted([routine.transaction_id, no_lsn.transaction_id])
        left = await backend.status.ids(states.COMMITTED)
        assert sorted(left) == sorted([generated.transaction_id, noted.transaction_id])
