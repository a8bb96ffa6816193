"""The console's transaction and dead-letter pages on Redis: a cursor against listing.

Transactions: both read one page of 50 ids of the ``buffered`` state of the
same Redis site. The baseline is what the console did before paging from a
cursor: ``StatusStore.ids(state, limit=end of the page)``, which reads every
id up to the page; ours is ``SupportsStatusPaging.ids_after(state, cursor,
50)``, which enters the state's index at the cursor. Dead letters: the
baseline is ``DeadLetterStore.list()`` (the console read every letter for
each page), ours ``SupportsLetterPaging.letters_after(cursor, 50)``. Rounds
are interleaved; each figure is min / median / max over the rounds, and the
ratio is of medians.

Run: ``python bench/console_paging_bench.py [--transactions N] [--letters N] [--rounds R]``.
Environment: ``CCAT_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import redis.asyncio as aioredis

from ccat_buffering.builder import TransactionBuilder
from ccat_buffering.demo._workload import add_observation
from ccat_buffering.manager import TransactionManager
from ccat_buffering.models import Transaction, TransactionState
from ccat_buffering.testing import new_site_name
from ccat_buffering_redis import RedisBackend


def observation(i: int) -> Transaction:
    """A start_observation transaction: an obs unit and its package."""
    tx = TransactionBuilder("start_observation")
    add_observation(tx, i, name=f"pkg-{i}", start_time=dt.datetime(2026, 11, 28, tzinfo=dt.UTC))
    return tx.build()


PAGE = 50
BUFFERED = TransactionState.BUFFERED


async def _ms(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


def _report(times: dict[tuple[str, int], list[float]], pages: list[int], base: str) -> None:
    for k in pages:
        line = [f"page {k + 1:>5}"]
        for name in (base, "cursor"):
            v = times[(name, k)]
            line.append(f"{name} {min(v):6.2f}/{statistics.median(v):6.2f}/{max(v):6.2f}")
        ratio = statistics.median(times[(base, k)]) / statistics.median(times[("cursor", k)])
        print("  ".join(line) + f"  {base} / cursor: {ratio:5.1f}x")


async def _letters(backend: RedisBackend, letters: int, rounds: int) -> None:
    store = backend.dead_letters
    for first in range(0, letters, 1000):
        count = min(1000, letters - first)
        await backend.buffer.push([f'{{"letter": {first + i}}}' for i in range(count)])
        claims = await backend.buffer.claim(count, 600)
        async with backend.atomic() as batch:
            for i, claim in enumerate(claims):
                batch.dead_letter(claim.receipt, "foreign key", f"letter-{first + i}")
    last_page = letters // PAGE - 1
    pages = sorted({0, last_page // 2, last_page})
    cursors: dict[int, str | None] = {0: None}
    cursor = None
    for k in range(1, last_page + 1):
        _, cursor = await store.letters_after(cursor, PAGE)
        cursors[k] = cursor
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for k in pages:
            times.setdefault(("cursor", k), []).append(
                await _ms(partial(store.letters_after, cursors[k], PAGE))
            )
            times.setdefault(("every letter", k), []).append(await _ms(store.list))
            await asyncio.sleep(0.02)
    print(f"{letters} dead letters, pages of {PAGE}, {rounds} rounds (ms: min/median/max)")
    _report(times, pages, "every letter")


async def main(transactions: int, letters: int, rounds: int) -> None:
    client = aioredis.Redis.from_url(
        os.environ.get("CCAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    backend = RedisBackend(client, site=new_site_name())
    status = backend.status
    try:
        manager = TransactionManager(backend)
        for first in range(0, transactions, 1000):
            last = min(first + 1000, transactions)
            await manager.buffer_many([observation(i) for i in range(first, last)])
        last_page = transactions // PAGE - 1
        pages = sorted({0, last_page // 2, last_page})
        cursors: dict[int, str | None] = {0: None}
        cursor = None
        for k in range(1, last_page + 1):
            _, cursor = await status.ids_after(BUFFERED, cursor, PAGE)
            cursors[k] = cursor
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds):
            for k in pages:
                ours = await _ms(partial(status.ids_after, BUFFERED, cursors[k], PAGE))
                base = await _ms(partial(status.ids, BUFFERED, limit=(k + 1) * PAGE + 1))
                times.setdefault(("cursor", k), []).append(ours)
                times.setdefault(("from start", k), []).append(base)
                await asyncio.sleep(0.02)
        print(f"{transactions} buffered, pages of {PAGE}, {rounds} rounds (ms: min/median/max)")
        _report(times, pages, "from start")
        await _letters(backend, letters, rounds)
    finally:
        keys = [key async for key in client.scan_iter(match=backend.keys.pattern(), count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--letters", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    asyncio.run(main(options.transactions, options.letters, options.rounds))
