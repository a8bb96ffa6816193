"""The claim writes the routine statuses ``processing`` itself, as the drain wrote them (issue #23).

``lua/claim.lua`` moves the routine statuses of the entries from the head on
to ``processing`` in the claim's own call; the drain writes the others
(``put_statuses``) as before. Here the same transactions, with statuses of
every shape, are claimed on two sites: one whose claim moves statuses, one
whose claim does not (the drain writes every status, as before the move
existed); every key the two leave behind is compared after each step: type,
value, members and scores, and whether and how long it lives.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from services import assert_same_sites, forget_site, site_dump

from ccat_buffering.buffer._transitions import Delivery
from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.models import Transaction, TransactionState, TransactionStatus
from ccat_buffering_redis import RedisBackend
from ccat_buffering_redis.stores import RedisBufferStore

from support import FakeClock, observation

S = TransactionState


class _NoMoves(RedisBufferStore):
    """A claim that moves no status: the drain writes each, as before."""

    async def claim_with_statuses(
        self, count: int, lease_seconds: float, processing_at: dt.datetime | None = None
    ) -> list[tuple[Any, str | None, TransactionStatus | None, Any]]:
        return await super().claim_with_statuses(count, lease_seconds)


class _Moves(RedisBufferStore):
    """The claim as it is, remembering which statuses it moved."""

    moved: list[str]

    async def claim_with_statuses(
        self, count: int, lease_seconds: float, processing_at: dt.datetime | None = None
    ) -> list[tuple[Any, str | None, TransactionStatus | None, Any]]:
        got = await super().claim_with_statuses(count, lease_seconds, processing_at)
        self.moved = [i for _, i, _, before in got if before is not None and i is not None]
        return got


class _Site:
    def __init__(self, client: aioredis.Redis, moves: bool) -> None:
        self.client = client
        self.backend = RedisBackend(client, site=new_site_name())
        self.moves = _Moves(self.backend)
        self.backend.buffer = self.moves if moves else _NoMoves(self.backend)
        self.clock = FakeClock(1_765_000_000.25)
        self.manager = TransactionManager(self.backend, clock=self.clock)
        self.claimed: list[Delivery] = []
        self.moved: list[str] = []

    def key(self, suffix: str) -> str:
        return self.backend.keys.prefix + suffix

    async def dump(self) -> dict[str, Any]:
        keys = self.backend.keys
        return await site_dump(self.client, keys.prefix, keys.pattern())


@pytest.fixture
async def sites(redis_client: aioredis.Redis) -> AsyncIterator[tuple[_Site, _Site]]:
    pair = (_Site(redis_client, True), _Site(redis_client, False))
    try:
        yield pair
    finally:
        for site in pair:
            await forget_site(redis_client, site.backend.keys.pattern())


Step = Callable[[_Site], Awaitable[Any]]


async def _same_steps(sites: tuple[_Site, _Site], steps: list[Step]) -> list[list[Any]]:
    """Run ``steps`` on both sites, comparing every key after each; each step's results."""
    results: list[list[Any]] = [[], []]
    for step in steps:
        for n, site in enumerate(sites):
            results[n].append(await step(site))
            site.clock.advance(0.000_7)
        assert_same_sites(await sites[0].dump(), await sites[1].dump())
    assert results[0] == results[1]
    return results[0]


def _claim(count: int) -> Step:
    """A claim; its deliveries without their leases' deadlines (each site's clock)."""

    async def claim(site: _Site) -> list[tuple[str, str, TransactionStatus, set[str]]]:
        site.moves.moved = []
        site.claimed = await site.manager.claim(count, 30)
        site.moved += site.moves.moved
        # The fields set too: the status a claim moved is built from its text.
        return [
            (d.claim.receipt, d.claim.payload, d.status, d.status.model_fields_set)
            for d in site.claimed
        ]

    return claim


def _buffer(txs: list[Transaction]) -> Step:
    async def buffer(site: _Site) -> None:
        await site.manager.buffer_many(txs)

    return buffer


async def test_a_drain_of_routine_statuses_stores_what_the_drain_wrote(
    sites: tuple[_Site, _Site],
) -> None:
    txs = [observation(i)[0] for i in range(7)]

    async def recover(site: _Site) -> int:
        return await site.backend.buffer.recover(include_unexpired=True)

    async def commit(site: _Site) -> None:
        await site.manager.committed(site.claimed[:1], None)

    results = await _same_steps(
        sites, [_buffer(txs), _claim(3), _claim(2), recover, _claim(4), commit, _claim(10)]
    )
    first, again = results[1], results[4]
    assert [status.state for _, _, status, _ in first] == [S.PROCESSING] * 3
    # A claim after a crash moves processing statuses again, at the new time.
    assert [s.transaction_id for _, _, s, _ in again] == [t.transaction_id for t in txs[:4]]
    assert again[0][2].updated_at > first[0][2].updated_at
    moved = sites[0].backend
    assert await moved.status.ids(S.PROCESSING) == [t.transaction_id for t in txs[1:]]
    assert await moved.status.ids(S.BUFFERED) == []


def _put(txid: str, **changes: Any) -> Step:
    """A step that stores a status of its own for a transaction."""

    async def put(site: _Site) -> None:
        status = await site.backend.status.get(txid)
        assert status is not None
        await site.backend.status.put(status.model_copy(update=changes), 600)

    return put


def _raw(txid: str, text: str) -> Step:
    """A step that stores ``text`` as a transaction's status (hand-written)."""

    async def raw(site: _Site) -> None:
        await site.client.set(site.key("transaction:" + txid), text)

    return raw


_CREATED = "1765000000000000"
# Each status shape, as the i-th transaction's: claimed alone (first in its
# claim) and in one claim, with the routine ones around it.
_SHAPES: list[Callable[[str], Step]] = [
    lambda i: _put(i, endpoint=""),
    lambda i: _put(i, endpoint="obs/unit: a,b{c}"),
    lambda i: _put(i, endpoint='say "hi"'),
    lambda i: _put(i, endpoint="café"),
    lambda i: _put(i, endpoint="a@b\\c"),
    lambda i: _put(i, attempts=2),
    lambda i: _put(i, attempts=2, last_error="boom"),
    lambda i: _put(i, state=S.PROCESSING, attempts=1),
    lambda i: _put(i, state=S.RETRYING),
    lambda i: _put(i, state=S.COMMITTED, committed_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC)),
    lambda i: _put(i, created_at=dt.datetime(2200, 1, 1, tzinfo=dt.UTC)),
    lambda i: _put(i, created_at=dt.datetime(1960, 1, 1, tzinfo=dt.UTC)),
    lambda i: _put(i, generated={"s": {"id": 1}}),
    lambda i: _raw(i, '7{"endpoint":"e","state":"buffered","attempts":0}@' + _CREATED + ",5"),
    lambda i: _raw(i, '{"endpoint":"e","state":"buffered"}@0' + _CREATED + ",5"),
    lambda i: _raw(i, '{"endpoint":"\\u0065","state":"buffered"}@' + _CREATED + ",5"),
    lambda i: _raw(i, '12{"state":"buffered"}@' + _CREATED + ",-5\n"),
    lambda i: _raw(i, '{"endpoint":"e","state":"buffered"}@' + _CREATED + ",+5\nObs:1"),
    lambda i: _raw(i, '{"endpoint":"e","state":"buffered"}@' + _CREATED + ",5,,"),
    lambda i: _raw(i, '{"endpoint":"e","state":"processing","attempts":12}@0,5\nObs:1 Obs:2'),
    lambda i: _raw(
        i,
        '{"endpoint":"e","state":"buffered","created_at":"2026-01-01T00:00:00Z",'
        '"updated_at":"2026-01-01T00:00:01Z"}',
    ),
]


@pytest.mark.parametrize("together", [False, True], ids=["alone", "together"])
async def test_every_status_shape_is_stored_as_the_drain_wrote_it(
    sites: tuple[_Site, _Site], together: bool
) -> None:
    txs = [observation(i)[0] for i in range(len(_SHAPES) + 2)]
    steps = [
        _buffer(txs),
        *(shape(t.transaction_id) for t, shape in zip(txs, _SHAPES, strict=False)),
    ]
    if together:
        steps += [_claim(4), _claim(100)]
    else:
        steps += [_claim(1) for _ in txs]
    claimed = [d for result in await _same_steps(sites, steps) if result for d in result]
    assert len(claimed) == len(txs)
    assert all(status.state is S.PROCESSING for _, _, status, _ in claimed)
    # The claim moved the routine ones (by their place in _SHAPES; the last two
    # keep their status as buffered); the drain wrote the others.
    routine = [0, 1, 5, 7, 16, 19, 21, 22]
    if together:
        routine = [0, 1]  # moved from the head on, up to the first it cannot move
    place = {t.transaction_id: i for i, t in enumerate(txs)}
    assert [place[i] for i in sites[0].moved] == routine
    assert sites[1].moved == []


async def test_statuses_after_one_the_claim_cannot_move_are_written_in_order(
    redis_client: aioredis.Redis, sites: tuple[_Site, _Site]
) -> None:
    txs = [observation(i)[0] for i in range(6)]
    bare, compressed = observation(99)[0], observation(98)[0]

    async def push_bare(site: _Site) -> None:
        # An entry with no status: the drain makes it one.
        await site.client.lpush(site.backend.keys.buffer, bare.to_json())

    async def push_squeezed(site: _Site) -> None:
        # A compressed entry: the claim does not read its id.
        squeezed = RedisBackend(redis_client, site=site.backend.site, compression="zlib")
        await TransactionManager(squeezed, clock=site.clock).buffer(compressed)

    async def retry_first(site: _Site) -> None:
        first, *rest = site.claimed
        await site.manager.failed([(first, ValueError("boom"), FailureKind.CONFLICT)], rest)
        await site.client.delete(site.key("hold"))

    steps = [_buffer(txs[:3]), push_bare, _buffer(txs[3:4]), push_squeezed, _buffer(txs[4:])]
    results = await _same_steps(sites, [*steps, _claim(100), retry_first, _claim(100)])
    claimed, again = results[5], results[7]
    assert len(claimed) == len(again) == 8
    # The head's routine ones moved by the claim, the rest after them, in buffer order.
    ids = [status.transaction_id for _, _, status, _ in claimed]
    assert ids[:3] == [t.transaction_id for t in txs[:3]] and ids[3] == bare.transaction_id
    # A retried transaction first (history): the drain writes every status.
    assert again[0][2].history and again[0][2].state is S.PROCESSING
    assert await sites[0].backend.status.ids(S.PROCESSING) == ids


async def test_an_entry_the_drain_refuses_keeps_the_status_a_reader_saw(
    sites: tuple[_Site, _Site],
) -> None:
    txs = [observation(i)[0] for i in range(4)]
    # Unreadable past its id: refused without an id, its status left as it was.
    broken = observation(50)[0]
    # Too large for the drain's limit: refused with its id, failed.
    large = observation(51, name="p" * 120)[0]

    async def setup(site: _Site) -> None:
        await site.manager.buffer_many([broken, large, *txs])
        entries = await site.client.lrange(site.backend.keys.buffer, 0, -1)
        # The oldest entry is the list's last; its text breaks after its id.
        damaged = broken.to_json()[:-1] + ',"x":}'
        await site.client.lset(site.backend.keys.buffer, len(entries) - 1, damaged)
        site.manager.max_payload_bytes = len(large.to_json()) - 1

    for site in sites:
        await setup(site)
    assert all(len(t.to_json()) < len(large.to_json()) - 100 for t in (broken, *txs))
    claimed = [await site.manager.claim(10, 30) for site in sites]
    assert [d.status for d in claimed[0]] == [d.status for d in claimed[1]]
    assert [d.transaction_id for d in claimed[0]] == [t.transaction_id for t in txs]
    moved, written = (site.backend for site in sites)
    for state in S:
        assert await moved.status.ids(state) == await written.status.ids(state), state
    every = [t.transaction_id for t in (broken, large, *txs)]
    assert await moved.status.get_many(every) == await written.status.get_many(every)
    kept = await moved.status.get(broken.transaction_id)
    assert kept is not None and kept.state is S.BUFFERED
    failed = await moved.status.get(large.transaction_id)
    assert failed is not None and failed.state is S.FAILED
    letters = [await backend.dead_letters.list() for backend in (moved, written)]
    assert [(x.reason, x.transaction_id) for x in letters[0]] == [
        (x.reason, x.transaction_id) for x in letters[1]
    ]


async def test_the_claim_moves_statuses_on_fakeredis_too() -> None:
    """fakeredis runs the script in its own Lua (the contract suite's first Redis)."""
    client = fakeredis.FakeAsyncRedis()
    try:
        async with RedisBackend(client, site=new_site_name()) as backend:
            store = _Moves(backend)
            backend.buffer = store
            manager = TransactionManager(backend, clock=FakeClock(1_765_000_000.25))
            txs = [observation(i)[0] for i in range(3)]
            await manager.buffer_many(txs)
            claimed = await manager.claim(10, 30)
            ids = [t.transaction_id for t in txs]
            assert store.moved == ids
            assert await backend.status.get_many(ids) == [d.status for d in claimed]
            assert await backend.status.ids(S.PROCESSING) == ids
            assert await backend.status.ids(S.BUFFERED) == []
    finally:
        await client.aclose()
