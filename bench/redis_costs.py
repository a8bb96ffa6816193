"""Where the time of ``buffer_many()`` on Redis goes, per transaction.

Buffers ``--transactions`` example transactions (see ``redis_bench.py``) in
calls of ``--batch`` through ``TransactionManager.buffer_many()`` on a
``RedisBackend``, timing each stage in Python, and reads Redis's own time
for the scripts from ``INFO commandstats`` (the difference before and
after, so other clients' commands of other kinds do not count). It explains
the figures of ``redis_bench.py``; it has no goal of its own.

With ``--compare-calls R``, it measures instead Redis's own time per
transaction in ``APPLY`` called as a Redis Function (``FCALL``) and as the
script it falls back to (``EVALSHA``), on the same staged calls of
``--batch`` transactions, in ``R`` interleaved rounds (min / median / max).

Reproduce: ``.venv/bin/python bench/redis_costs.py [--transactions 20000] [--batch 50]
[--compare-calls 6]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis_bench import DEFAULT_URL, Namespace, build_transaction, pattern_of

import ccat_buffering_redis.stores as redis_stores
from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering_redis import RedisBackend
from ccat_buffering_redis._frame import frame


def timed(spent: Counter[str], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - began

    return wrapper


async def script_usec(client: Redis) -> int:
    """Redis's time in ``APPLY`` so far: as a function (``FCALL``) or as a script (``EVALSHA``)."""
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in ("fcall", "evalsha"))


async def run(url: str, n: int, batch: int) -> None:
    client = Redis.from_url(url)
    ns = Namespace(client)
    site = ns.site("costs")
    spent: Counter[str] = Counter()
    backend = RedisBackend(client, site=site)
    manager = TransactionManager(backend)
    # Instance attributes shadow the methods: only this run's objects are timed.
    manager._prepare = timed(spent, "validate and serialise", manager._prepare)  # type: ignore[method-assign]
    for name in ("push", "put_status", "write_cache"):
        cls = redis_stores.RedisWriteBatch
        setattr(cls, name, timed(spent, f"stage {name}", getattr(cls, name)))
    call = backend._functions["apply"]

    async def apply_call(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        finally:
            spent["await APPLY (round trip)"] += time.perf_counter() - began

    backend._functions["apply"] = apply_call  # type: ignore[assignment]
    pool = [build_transaction(i) for i in range(n)]
    try:
        await manager.buffer_many(pool[:batch])  # warm-up: loads the script
        spent.clear()
        before = await script_usec(client)
        began = time.perf_counter()
        for i in range(batch, n, batch):
            await manager.buffer_many(pool[i : i + batch])
        wall = time.perf_counter() - began
        inside = (await script_usec(client) - before) / 1e6
    finally:
        await ns.purge(pattern_of(site))
        await client.aclose()
    done = n - batch
    print(f"buffer_many({batch}) on {url}, {done:,} transactions, microseconds per transaction:")
    print(f"  {'all of buffer_many()':34s} {wall / done * 1e6:7.1f}")
    for name, seconds in spent.items():
        print(f"  {name:34s} {seconds / done * 1e6:7.1f}")
    how = "FCALL" if call.usable else "EVALSHA"
    print(f"  {'  of which Redis runs APPLY (' + how + ')':34s} {inside / done * 1e6:7.1f}")


async def compare_calls(url: str, n: int, batch: int, rounds: int) -> None:
    """Redis's time per transaction in ``APPLY``: ``FCALL`` vs ``EVALSHA``, interleaved."""
    client = Redis.from_url(url)
    ns = Namespace(client)
    staging = TransactionManager(RedisBackend(client, site=ns.site("stage")))
    calls = []
    pool = [build_transaction(i) for i in range(n)]
    for i in range(0, n, batch):
        staged = redis_stores.RedisWriteBatch()
        for tx in pool[i : i + batch]:
            payload, writes, status = staging._prepare(tx)
            staged.push(payload)
            staged.put_status(status, staging.status_ttl)
            staged.write_cache(status.transaction_id, writes, staging.cache_ttl)
        calls.append(frame([staged.ops]))
    spent: dict[str, list[float]] = {"FCALL": [], "EVALSHA": []}
    try:
        for r in range(rounds):
            for how in ("FCALL", "EVALSHA") if r % 2 == 0 else ("EVALSHA", "FCALL"):
                site = ns.site(f"{how.lower()}{r}")
                backend = RedisBackend(client, site=site)
                backend._functions["apply"].usable = how == "FCALL"
                await backend.script("apply", *calls[0])  # loads it
                before = await script_usec(client)
                for args in calls[1:]:
                    await backend.script("apply", *args)
                inside = await script_usec(client) - before
                spent[how].append(inside / ((len(calls) - 1) * batch))
                await ns.purge(pattern_of(site))
    finally:
        await client.aclose()
    print(f"Redis's time in APPLY per transaction, calls of {batch}, {rounds} rounds (us):")
    for how, values in spent.items():
        shown = " / ".join(f"{f(values):.1f}" for f in (min, statistics.median, max))
        print(f"  {how:8s} {shown}")
    ratios = [f / e for f, e in zip(spent["FCALL"], spent["EVALSHA"], strict=True)]
    shown = " / ".join(f"{f(ratios):.2f}" for f in (min, statistics.median, max))
    print(f"  FCALL / EVALSHA, per round: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--compare-calls", type=int, default=0, metavar="ROUNDS")
    args = parser.parse_args()
    if args.compare_calls:
        compare = compare_calls(args.redis_url, args.transactions, args.batch, args.compare_calls)
        asyncio.run(compare)
    else:
        asyncio.run(run(args.redis_url, args.transactions, args.batch))


if __name__ == "__main__":
    main()
