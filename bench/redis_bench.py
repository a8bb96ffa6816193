"""Redis benchmarks (issues 3, 12, 23): ``TransactionManager.buffer`` on ``RedisBackend``.

Every figure is measured in the same run, against the same Redis, as its
baselines; contenders run back to back in interleaved rounds (the order rotates
each round), each with a warm-up, and each ratio is the median of the per-round
ratios (paired, so the load of other processes between rounds cancels), printed
with its min / median / max.

Payload: a ~700-byte transaction built with ``TransactionBuilder`` on the example
models (an ``ExecutedObsUnit`` create and a ``RawDataPackage`` create). Baselines
get it pre-serialised (``Transaction.to_json()`` done before timing); ours gets the
``Transaction`` objects as ``build()`` returns them and does all the rest of its
work (validation, the cache and status texts, the frame) inside ``buffer()``.
``build()`` serialises a transaction once, to check its size, and keeps the text
with the values it was made from; ``buffer()`` sends that text (a transaction's
JSON is made once, as the baselines' is). Built with ``Transaction(...)`` or
copied with a field changed, a transaction is serialised by ``buffer()``.

Baselines (issue 23):

* (a) **the limit**: one ``EVALSHA`` of a trivial script that ``LPUSH``-es the
  payload: the cost of an atomic one-round-trip write.
* (b) the origin's four commands **pipelined** (one round trip, not atomic):
  ``LPUSH`` the JSON, ``SETEX`` the status (the origin stored the transaction's
  JSON as status, 1 h), ``SET`` the ID cache and ``SET`` the buffered cache (1 h).
* (c) the same four commands in ``MULTI``/``EXEC`` (atomic).

Measurements:

1. ``buffer()`` with one producer (sequential awaits) and with 16 on one client
   (``asyncio.gather``), vs (a), (b) and (c). Goals of issue 23: >= 0.6x (a) with
   one producer and with 16, >= 1.2x (b).
2. Latency of ``buffer()`` with one producer, p50 and p99, vs that of (a). Goal:
   p50 <= 2x.
3. ``buffer_many()`` of 50 vs raw pipelined ``LPUSH`` of 50 (reference).
4. Redis ``used_memory`` growth (``INFO memory``) per buffered transaction, all its
   keys counted, over ``--memory-transactions``. Goal of issue 23: <= 2,000 B with
   default settings. The origin's layout is measured the same way for reference.
   Keys of other clients are counted before and after; a change is reported,
   since it would blur the figure (the sum of ``MEMORY USAGE`` of the layout's
   keys, printed too, is blind to them).

Only the given database is used (default ``redis://127.0.0.1:6379/15``, or
``CCAT_TEST_REDIS_URL``); every key written lives under a ``site:{b<token>-...}``
prefix and is deleted with ``SCAN MATCH`` and ``UNLINK`` afterwards. Nothing is
flushed.

Reproduce: ``.venv/bin/python bench/redis_bench.py [--seconds 1.0] [--rounds 5]
[--memory-transactions 20000] [--redis-url URL]`` (``make bench`` runs it too).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.demo._workload import add_observation
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction
from ccat_buffering_redis import RedisBackend
from ccat_buffering_redis.keys import SUFFIXES, SiteKeys

DEFAULT_URL = os.environ.get("CCAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
STATUS_TTL = 3600
BATCH = 50
POOL = 40_000
PRODUCERS = 16

Step = Callable[[], Awaitable[int]]
"""Does one unit of work and returns how many transactions it buffered (0: out of input)."""


@dataclass(frozen=True)
class Options:
    """What to run: see ``add_arguments``."""

    redis_url: str = DEFAULT_URL
    seconds: float = 1.0
    rounds: int = 5
    memory_transactions: int = 20_000

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        return cls(args.redis_url, args.seconds, args.rounds, args.memory_transactions)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=DEFAULT_URL, help="database to use (db 15)")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per ratio")
    parser.add_argument(
        "--memory-transactions", type=int, default=20_000, help="N for the memory figure"
    )


# -- the payload -------------------------------------------------------------


def build_transaction(i: int) -> Transaction:
    tx = TransactionBuilder("start_observation")
    add_observation(
        tx,
        1000 + i,
        name=f"fyst-chai-2026-11-28T03:15:00Z-obs{i:07d}-raw-data-package",
        start_time=dt.datetime.now(dt.UTC),
        mean_pwv=Decimal("1.235"),
    )
    return tx.build()


@dataclass(frozen=True)
class Payload:
    """A transaction as the baselines get it: pre-serialised, with its cache key id."""

    json: str
    transaction_id: str
    record_id: str

    @classmethod
    def of(cls, tx: Transaction) -> Payload:
        record_id = (tx.steps[0].data or {})["id"]
        return cls(tx.to_json(), tx.transaction_id, record_id)


# -- Redis housekeeping ------------------------------------------------------


class Namespace:
    """Hands out site names under one run token and deletes their keys."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.token = uuid.uuid4().hex[:8]
        self.extra_keys: list[str] = []

    def site(self, label: str) -> str:
        # Short, like a real site's name ("observatory"): key names are part of the memory figure.
        return f"b{self.token}-{label}"

    async def count(self, pattern: str) -> int:
        return sum([1 async for _ in self.client.scan_iter(match=pattern, count=2000)])

    async def purge(self, pattern: str | None = None) -> None:
        """Delete the keys matching ``pattern`` (default: every site of this run)."""
        pattern = pattern or f"site:{{b{self.token}-*"
        keys: list[Any] = [k async for k in self.client.scan_iter(match=pattern, count=2000)]
        keys, self.extra_keys = keys + self.extra_keys, []
        for i in range(0, len(keys), 1000):
            await self.client.unlink(*keys[i : i + 1000])


def pattern_of(site: str) -> str:
    return SiteKeys(site).pattern()


# -- timing ------------------------------------------------------------------


async def timed(step: Step, seconds: float, producers: int = 1) -> tuple[float, list[float]]:
    """Transactions/s of ``producers`` coroutines looping ``step`` after a warm-up, and
    each timed step's latency (seconds)."""
    latencies: list[float] = []

    async def loop(deadline: float, record: bool) -> int:
        done = 0
        clock = time.perf_counter
        while (began := clock()) < deadline:
            n = await step()
            if not n:
                break
            if record:
                latencies.append(clock() - began)
            done += n
        return done

    warm = time.perf_counter() + min(0.3, seconds / 4)
    await asyncio.gather(*(loop(warm, False) for _ in range(producers)))
    began = time.perf_counter()
    counts = await asyncio.gather(*(loop(began + seconds, True) for _ in range(producers)))
    return sum(counts) / (time.perf_counter() - began), latencies


Contender = Callable[[str], Awaitable[tuple[Step, Callable[[], Awaitable[None]]]]]
"""Given a fresh site name, returns its step and its cleanup."""


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class Runs:
    """Rates (transactions/s) and latency quantiles of each contender, one per round."""

    rates: dict[str, list[float]]
    p50: dict[str, list[float]]
    p99: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.rates[name])

    def ratios(self, name: str, baseline: str, of: str = "rates") -> list[float]:
        """Ours over the baseline, round by round (paired, so drift between rounds cancels)."""
        mine, theirs = getattr(self, of)[name], getattr(self, of)[baseline]
        return [o / b for o, b in zip(mine, theirs, strict=True)]


async def compare(
    ns: Namespace, contenders: dict[str, Contender], opts: Options, producers: int = 1
) -> Runs:
    """Run the contenders in interleaved rounds, the order rotating each round."""
    runs = Runs(
        {n: [] for n in contenders}, {n: [] for n in contenders}, {n: [] for n in contenders}
    )
    names = list(contenders)
    for r in range(opts.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            site = ns.site(f"{name}-{r}")
            step, cleanup = await contenders[name](site)
            try:
                rate_, latencies = await timed(step, opts.seconds, producers)
                runs.rates[name].append(rate_)
                runs.p50[name].append(quantile(latencies, 0.5))
                runs.p99[name].append(quantile(latencies, 0.99))
            finally:
                await cleanup()
                await ns.purge(pattern_of(site))
    return runs


# -- contenders --------------------------------------------------------------


def feed(items: list[Any]) -> Callable[[], Any]:
    it = iter(items)
    return lambda: next(it, None)


async def _nothing() -> None:
    return None


async def check_depth(client: Redis, site: str, expected: int) -> None:
    """Refuse a figure for writes that did not happen."""
    depth = await client.llen(SiteKeys(site).buffer)
    if depth != expected:
        raise RuntimeError(f"site {site} holds {depth} buffered entries, expected {expected}")


def ours_flow(client: Redis, pool: list[Transaction], batch: int | None = None) -> Contender:
    """``buffer()`` each transaction, or ``buffer_many()`` of ``batch`` at a time."""
    size = batch or 1
    groups = [pool[i : i + size] for i in range(0, len(pool) - size + 1, size)]

    async def make(site: str) -> tuple[Step, Callable[[], Awaitable[None]]]:
        manager = TransactionManager(RedisBackend(client, site=site))
        take = feed(groups)
        done = 0

        async def step() -> int:
            nonlocal done
            group = take()
            if group is None:
                return 0
            if batch is None:
                await manager.buffer(group[0])
            else:
                await manager.buffer_many(group)
            done += len(group)
            return len(group)

        return step, lambda: check_depth(client, site, done)

    return make


def pipelined_lpush(client: Redis, payloads: list[Payload]) -> Contender:
    async def make(site: str) -> tuple[Step, Callable[[], Awaitable[None]]]:
        key = SiteKeys(site).buffer
        jsons = itertools.cycle([p.json for p in payloads])

        async def step() -> int:
            pipe = client.pipeline(transaction=False)
            for _ in range(BATCH):
                pipe.lpush(key, next(jsons))
            await pipe.execute()
            return BATCH

        return step, _nothing

    return make


def origin_keys(prefix: str, p: Payload) -> tuple[str, str, str]:
    return (
        f"{prefix}{SUFFIXES['status']}{p.transaction_id}",
        f"{prefix}{SUFFIXES['ids']}ExecutedObsUnit:{p.record_id}",
        f"{prefix}{SUFFIXES['buffered']}ExecutedObsUnit:{p.record_id}",
    )


LIMIT_LUA = "return redis.call('LPUSH', KEYS[1], ARGV[1])"


def limit_flow(client: Redis, payloads: list[Payload]) -> Contender:
    """Baseline (a): one EVALSHA of a trivial script that LPUSHes the payload."""
    script = client.register_script(LIMIT_LUA)

    async def make(site: str) -> tuple[Step, Callable[[], Awaitable[None]]]:
        key = SiteKeys(site).buffer
        take = feed(payloads)

        async def step() -> int:
            p = take()
            if p is None:
                return 0
            await script(keys=[key], args=[p.json])
            return 1

        return step, _nothing

    return make


def origin_flow(client: Redis, payloads: list[Payload], *, atomic: bool) -> Contender:
    """Baselines (b) and (c): the origin's four commands, pipelined or in MULTI/EXEC."""

    async def make(site: str) -> tuple[Step, Callable[[], Awaitable[None]]]:
        keys = SiteKeys(site)
        take = feed(payloads)

        async def step() -> int:
            p = take()
            if p is None:
                return 0
            status, ids, buffered = origin_keys(keys.prefix, p)
            pipe = client.pipeline(transaction=atomic)
            pipe.lpush(keys.buffer, p.json)
            pipe.execute_command("SETEX", status, STATUS_TTL, p.json)
            pipe.set(ids, p.json, ex=STATUS_TTL)
            pipe.set(buffered, p.json, ex=STATUS_TTL)
            await pipe.execute()
            return 1

        return step, _nothing

    return make


# -- memory ------------------------------------------------------------------


def transactions(n: int, offset: int, chunk: int = 1000) -> Iterator[list[Transaction]]:
    for start in range(offset, offset + n, chunk):
        yield [build_transaction(i) for i in range(start, min(start + chunk, offset + n))]


async def used_memory(client: Redis) -> int:
    """``used_memory`` once it holds still (an incremental rehash may be under way)."""
    last, same = -1, 0
    for _ in range(50):
        value = int((await client.info("memory"))["used_memory"])
        same = same + 1 if value == last else 0
        if same == 2:
            break
        last = value
        await asyncio.sleep(0.1)
    return last


async def all_keys(client: Redis) -> int:
    return sum(int(db["keys"]) for db in (await client.info("keyspace")).values())


def role_of(key: str, prefix: str) -> str:
    """The part of a key that names its role: ``buffered:``, ``state:buffered``, ..."""
    rest = key[len(prefix) :]
    for role in (SUFFIXES[r] for r in ("ids", "buffered", "status", "index", "fields")):
        if rest.startswith(role):
            return role
    return rest.rstrip("0123456789").removesuffix(":")  # a state's buckets: the state


async def memory_usage(client: Redis, pattern: str, prefix: str) -> dict[str, int]:
    """``MEMORY USAGE`` of the matching keys, summed by role: blind to other clients' writes."""
    totals: dict[str, int] = {}
    keys = [key.decode() async for key in client.scan_iter(match=pattern, count=2000)]
    for i in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)
        chunk = keys[i : i + 1000]
        for key in chunk:
            pipe.memory_usage(key, samples=0)
        for key, usage in zip(chunk, await pipe.execute(), strict=True):
            role = role_of(key, prefix)
            totals[role] = totals.get(role, 0) + int(usage or 0)
    return totals


@dataclass(frozen=True)
class MemoryFigure:
    """Memory of one layout per buffered transaction, in bytes."""

    used_memory: float
    key_sum: float
    payload: float
    foreign_keys_changed: int
    by_role: dict[str, float]

    @property
    def ratio(self) -> float:
        return self.used_memory / self.payload


async def measure_memory(
    ns: Namespace, site: str, n: int, fill: Callable[[], Awaitable[int]]
) -> MemoryFigure:
    """Growth of ``used_memory`` while ``fill`` buffers ``n`` transactions into ``site``.

    ``fill`` returns the payloads' total JSON size. The site's keys are deleted after.
    """
    client, pattern = ns.client, pattern_of(site)
    try:
        foreign = await all_keys(client)
        before = await used_memory(client)
        size = await fill()
        after = await used_memory(client)
        await check_depth(client, site, n)
        foreign_changed = await all_keys(client) - await ns.count(pattern) - foreign
        by_role = await memory_usage(client, pattern, SiteKeys(site).prefix)
    finally:
        await ns.purge(pattern)
    key_sum = sum(by_role.values())
    return MemoryFigure(
        (after - before) / n,
        key_sum / n,
        size / n,
        foreign_changed,
        {role: total / n for role, total in sorted(by_role.items(), key=lambda r: -r[1])},
    )


async def memory_ours(ns: Namespace, n: int, compression: str | None = None) -> MemoryFigure:
    warm = TransactionManager(RedisBackend(ns.client, site=ns.site("mw")))
    await warm.buffer_many([build_transaction(-i) for i in range(1, BATCH + 1)])
    await ns.purge(pattern_of(ns.site("mw")))
    site = ns.site("mz" if compression else "mo")
    manager = TransactionManager(RedisBackend(ns.client, site=site, compression=compression))

    async def fill() -> int:
        size = 0
        for chunk in transactions(n, 0):
            size += sum(len(tx.to_json()) for tx in chunk)
            for i in range(0, len(chunk), BATCH):
                await manager.buffer_many(chunk[i : i + BATCH])
        return size

    return await measure_memory(ns, site, n, fill)


async def memory_origin(ns: Namespace, n: int) -> MemoryFigure:
    site = ns.site("mb")
    keys = SiteKeys(site)

    async def fill() -> int:
        size = 0
        for chunk in transactions(n, 0):
            pipe = ns.client.pipeline(transaction=False)
            for p in map(Payload.of, chunk):
                size += len(p.json)
                status, ids, buffered = origin_keys(keys.prefix, p)
                pipe.lpush(keys.buffer, p.json)
                pipe.execute_command("SETEX", status, STATUS_TTL, p.json)
                pipe.set(ids, p.json, ex=STATUS_TTL)
                pipe.set(buffered, p.json, ex=STATUS_TTL)
            await pipe.execute()
        return size

    return await measure_memory(ns, site, n, fill)


# -- the report --------------------------------------------------------------


def spread(ratios: list[float]) -> str:
    """min / median / max of per-round ratios."""
    return f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}x"


def ratio_row(
    name: str, ours: str, baseline: str, ratios: list[float], goal: tuple[str, bool] | None
) -> tuple[str, ...]:
    """A line of the table: the ratio's min / median / max, and its goal if it has one."""
    if goal is None:
        return (name, ours, baseline, spread(ratios), "ref.", "ref.")
    text, passed = goal
    return (name, ours, baseline, spread(ratios), text, "PASS" if passed else "MISS")


def memory_row(label: str, figure: MemoryFigure, goal: float | None) -> tuple[str, ...]:
    """A line of the memory figure; ``goal`` in bytes per transaction."""
    name = f"4. used_memory per tx, {label}"
    line = (name, f"{figure.used_memory:,.0f} B/tx", f"{figure.payload:,.0f} B JSON")
    shown = f"{figure.ratio:.2f}x JSON"
    if goal is None:
        return (*line, shown, "ref.", "ref.")
    passed = "PASS" if figure.used_memory <= goal else "MISS"
    return (*line, shown, f"<= {goal:,.0f} B", passed)


def rate(value: float) -> str:
    return f"{value:,.0f} tx/s"


def usec(value: float) -> str:
    return f"{value * 1e6:,.0f} us"


def print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("measurement", "ours", "baseline", "ratio min / median / max", "goal", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for line in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


async def run(opts: Options) -> None:
    """Run every measurement and print the table; skip when Redis cannot be reached."""
    client = Redis.from_url(opts.redis_url)
    try:
        info = await client.info("server")
    except Exception as exc:  # whatever stops us reaching Redis means: skip
        print(f"redis benchmarks skipped: {opts.redis_url} cannot be reached ({exc})")
        await client.aclose()
        return
    ns = Namespace(client)
    try:
        await _run(ns, opts, str(info["redis_version"]))
    finally:
        await ns.purge()
        await client.aclose()


BASELINES = {
    "a": ("(a) one-EVALSHA limit", ">= 0.6x"),
    "b": ("(b) origin, 4 commands pipelined", ">= 1.2x"),
    "c": ("(c) origin, MULTI/EXEC", None),
}


def throughput_rows(runs: Runs, producers: int) -> list[tuple[str, ...]]:
    rows = []
    for key, (label, goal) in BASELINES.items():
        ratios = runs.ratios("ours", key)
        floor = float(goal[3:-1]) if goal else 0.0
        rows.append(
            ratio_row(
                f"1. buffer(), {producers} producer{'s' * (producers > 1)} vs {label}",
                rate(runs.median("ours")),
                rate(runs.median(key)),
                ratios,
                None if goal is None else (goal, statistics.median(ratios) >= floor),
            )
        )
    return rows


async def _run(ns: Namespace, opts: Options, version: str) -> None:
    client = ns.client
    payloads = [Payload.of(build_transaction(i)) for i in range(POOL)]
    pool = [build_transaction(i) for i in range(POOL)]  # ours: as build() returns them
    size = statistics.mean(len(p.json) for p in payloads)
    print(
        f"\nredis {version} at {opts.redis_url}; payload {size:.0f} bytes of JSON; "
        f"{opts.rounds} interleaved rounds of {opts.seconds} s each; ratios are per-round "
        "ratios, min / median / max"
    )
    contenders: dict[str, Contender] = {
        "ours": ours_flow(client, pool),
        "a": limit_flow(client, payloads),
        "b": origin_flow(client, payloads, atomic=False),
        "c": origin_flow(client, payloads, atomic=True),
    }
    rows: list[tuple[str, ...]] = []
    one = await compare(ns, contenders, opts)
    rows += throughput_rows(one, 1)
    many = await compare(ns, contenders, opts, producers=PRODUCERS)
    rows += throughput_rows(many, PRODUCERS)
    for q, goal in (("p50", 2.0), ("p99", None)):
        ratios = one.ratios("ours", "a", of=q)
        ours_q = statistics.median(getattr(one, q)["ours"])
        limit_q = statistics.median(getattr(one, q)["a"])
        rows.append(
            ratio_row(
                f"2. buffer() {q} latency, 1 producer vs (a) limit",
                usec(ours_q),
                usec(limit_q),
                ratios,
                None if goal is None else (f"<= {goal}x", statistics.median(ratios) <= goal),
            )
        )
    batched = await compare(
        ns,
        {"ours": ours_flow(client, pool, BATCH), "a": pipelined_lpush(client, payloads)},
        opts,
    )
    rows.append(
        ratio_row(
            f"3. buffer_many({BATCH}) vs pipelined LPUSH x{BATCH}",
            rate(batched.median("ours")),
            rate(batched.median("a")),
            batched.ratios("ours", "a"),
            None,
        )
    )
    n = opts.memory_transactions
    ours, origin = await memory_ours(ns, n), await memory_origin(ns, n)
    rows.append(memory_row("ours", ours, 2000))
    rows.append(memory_row("origin layout", origin, None))
    print_table(rows)
    print(
        f"4. over N = {n:,} transactions per layout, default settings; cross-check, sum of "
        f"MEMORY USAGE of the layout's keys (no dict buckets or expiry entries): "
        f"ours {ours.key_sum:,.0f} B/tx, origin {origin.key_sum:,.0f} B/tx"
    )
    parts = ", ".join(f"{role} {size:,.0f}" for role, size in ours.by_role.items())
    print(f"   ours, MEMORY USAGE per transaction by key: {parts}")
    for label, figure in (("ours", ours), ("origin", origin)):
        if figure.foreign_keys_changed:
            print(
                f"   warning: other clients' keys changed by {figure.foreign_keys_changed:+,} "
                f"during the {label} memory run; used_memory includes their writes"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    asyncio.run(run(Options.from_args(parser.parse_args())))


if __name__ == "__main__":
    main()
