"""What tracing costs a submit: with no tracer provider configured, and with an SDK one.

``site.submit`` on a secondary site (memory backend, the fastest store, so
the ratio is the worst case; and Redis when it answers), three ways in
alternating rounds of the same process:

* baseline: the tracing hook removed (what submit cost before tracing);
* off: the ``otel`` extra installed, no tracer provider configured, no
  current span (the default): must be within 3 % of the baseline;
* SDK: an SDK ``TracerProvider`` with no exporter (a ``send`` span is made,
  its context injected into the transaction), for reference.

Run: ``python bench/tracing_bench.py [--transactions N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import statistics
import time
from collections.abc import Iterator

from opentelemetry.sdk.trace import TracerProvider

from ccat_buffering import BufferingCoordinator, BufferingSettings, TransactionBuilder
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.drain.tracing import Tracing
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.registry import ModelRegistry

REDIS_URL = os.environ.get("CCAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


class Untraced(Tracing):
    """The baseline: no hook at all around submit."""

    @contextlib.contextmanager
    def sending(self, transaction: Transaction) -> Iterator[Transaction]:
        yield transaction


def _transactions(n: int, run: str) -> list[Transaction]:
    out = []
    for i in range(n):
        tx = TransactionBuilder("bench")
        tx.create(
            ExecutedObsUnit,
            {
                "id": f"{run}-{i}",
                "obs_unit_id": i,
                "status": "running",
                "start_time": "2026-12-01T00:00:00Z",
            },
        )
        out.append(tx.build())
    return out


async def _rate(site: BufferingCoordinator, transactions: list[Transaction]) -> float:
    # The collector off while timing, as timeit does: on the memory backend a
    # round is ~30 ms and one full collection of the growing buffer took up to
    # five times that, whichever mode happened to be running.
    gc.collect()
    gc.disable()
    try:
        began = time.perf_counter()
        for tx in transactions:
            await site.submit(tx)
        return len(transactions) / (time.perf_counter() - began)
    finally:
        gc.enable()


async def measure(backend_url: str, n: int, rounds: int) -> dict[str, list[float]]:
    """Submit rates per mode, one per round; the modes take turns first (rotated order)."""
    settings = BufferingSettings(
        site_name=f"bench-tracing-{os.getpid()}",
        backend_url=backend_url,
        database_url="sqlite+aiosqlite://",
    )
    registry = ModelRegistry.from_base(Base)
    modes = {
        "baseline": Untraced(settings.site_name),
        "off": Tracing(settings.site_name),
        "sdk": Tracing(settings.site_name, TracerProvider()),
    }
    names = list(modes)
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    async with BufferingCoordinator.from_settings(settings, registry=registry, start=False) as site:
        await _rate(site, _transactions(min(n, 500), "warm"))
        for r in range(rounds):
            for mode in names[r % 3 :] + names[: r % 3]:
                site.tracing = modes[mode]
                rates[mode].append(await _rate(site, _transactions(n, f"{mode}-{r}")))
        if backend_url.startswith("redis"):
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(backend_url)
            keys = [k async for k in client.scan_iter(match=f"site:{{{settings.site_name}}}:*")]
            for start in range(0, len(keys), 500):
                await client.delete(*keys[start : start + 500])
            await client.aclose()
    return rates


def _costs(rates: dict[str, list[float]], mode: str) -> tuple[float, float, float]:
    """min / median / max over rounds of the mode's extra time against the same round's baseline."""
    costs = sorted(b / m - 1 for b, m in zip(rates["baseline"], rates[mode], strict=True))
    return costs[0], statistics.median(costs), costs[-1]


async def main(n: int, rounds: int) -> None:
    print(
        f"submit cost of tracing against the untraced baseline of the same round "
        f"(min / median / max over {rounds} rounds of {n}; modes rotate which goes first)"
    )
    print(f"{'backend':>8} {'baseline tx/s':>14} {'off cost':>24} {'sdk cost':>24}")
    for name, url in (("memory", "memory://"), ("redis", REDIS_URL)):
        try:
            rates = await measure(url, n, rounds)
        except Exception as exc:  # Redis missing: say so, measure the rest
            print(f"{name:>8} skipped: {exc}")
            continue
        cells = [" / ".join(f"{c:+.1%}" for c in _costs(rates, mode)) for mode in ("off", "sdk")]
        baseline = statistics.median(rates["baseline"])
        print(f"{name:>8} {baseline:>14.0f} {cells[0]:>24} {cells[1]:>24}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=21)
    options = parser.parse_args()
    asyncio.run(main(options.transactions, options.rounds))
