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
    began = time.perf_counter()
    for tx in transactions:
        await site.submit(tx)
    return len(transactions) / (time.perf_counter() - began)


async def measure(backend_url: str, n: int, rounds: int) -> dict[str, float]:
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
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    async with BufferingCoordinator.from_settings(settings, registry=registry, start=False) as site:
        await _rate(site, _transactions(min(n, 500), "warm"))
        for r in range(rounds):
            for mode, tracing in modes.items():
                site.tracing = tracing
                rates[mode].append(await _rate(site, _transactions(n, f"{mode}-{r}")))
        if backend_url.startswith("redis"):
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(backend_url)
            keys = [k async for k in client.scan_iter(match=f"site:{{{settings.site_name}}}:*")]
            for start in range(0, len(keys), 500):
                await client.delete(*keys[start : start + 500])
            await client.aclose()
    return {mode: statistics.median(values) for mode, values in rates.items()}


async def main(n: int, rounds: int) -> None:
    print(f"submit rate (transactions/s, median of {rounds} alternating rounds of {n})")
    print(f"{'backend':>8} {'baseline':>9} {'off':>9} {'sdk':>9} {'off cost':>9} {'sdk cost':>9}")
    for name, url in (("memory", "memory://"), ("redis", REDIS_URL)):
        try:
            r = await measure(url, n, rounds)
        except Exception as exc:  # Redis missing: say so, measure the rest
            print(f"{name:>8} skipped: {exc}")
            continue
        off = r["baseline"] / r["off"] - 1
        sdk = r["baseline"] / r["sdk"] - 1
        print(
            f"{name:>8} {r['baseline']:>9.0f} {r['off']:>9.0f} {r['sdk']:>9.0f} "
            f"{off:>+8.1%} {sdk:>+8.1%}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    asyncio.run(main(options.transactions, options.rounds))
