"""What waiting costs the buffer: Redis commands per second for 1, 1,000 and 5,000 waiters.

Every ``site.wait`` of a process shares one poller (``ccat_buffering.confirm.waiting``):
one ``MGET`` of up to 1,000 statuses per ``wait_poll_interval``, plus one
``GET`` when each wait begins. The benchmark starts a throwaway
``redis-server`` (so that nothing else counts), buffers the transactions,
opens the waits, and counts the commands Redis processed (``INFO stats``
``total_commands_processed``) over a window while they wait. The baseline is
one poller per waiter (what a polling loop in user code costs: one ``GET``
per waiter per interval), computed for the same interval. Then every status is
set to ``committed`` in one atomic group and the time until the last wait
returns is measured (about one interval).

Run: ``python bench/waiters_bench.py [--seconds S] [--interval I]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import socket
import subprocess
import tempfile
import time

import redis.asyncio as aioredis

from ccat_buffering import BufferingCoordinator, BufferingSettings, TransactionBuilder
from ccat_buffering.confirm.waiting import SLICE
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _commands(client: aioredis.Redis) -> int:
    info = await client.info("stats")
    return int(info["total_commands_processed"])


async def measure(url: str, waiters: int, interval: float, seconds: float) -> dict[str, float]:
    settings = BufferingSettings(
        site_name=f"bench-waits-{waiters}",
        backend_url=url,
        database_url="sqlite+aiosqlite://",
        wait_poll_interval=interval,
    )
    registry = ModelRegistry.from_base(Base)
    client = aioredis.Redis.from_url(url)
    async with BufferingCoordinator.from_settings(settings, registry=registry, start=False) as site:
        ids = []
        for i in range(waiters):
            tx = TransactionBuilder("bench")
            tx.create(
                ExecutedObsUnit,
                {
                    "id": f"w-{i}",
                    "obs_unit_id": i,
                    "status": "running",
                    "start_time": "2026-12-01T00:00:00Z",
                },
            )
            ids.append((await site.manager.buffer(tx.build())).transaction_id)
        started = await _commands(client)
        waits = [asyncio.create_task(site.wait(i, until="committed", timeout=600)) for i in ids]
        while site.statuses.waiting < waiters:
            await asyncio.sleep(0.01)
        begun = await _commands(client) - started - 1
        before = await _commands(client)
        await asyncio.sleep(seconds)
        after = await _commands(client)
        per_second = (after - before - 1) / seconds  # the INFO itself is one
        statuses = await site.backend.status.get_many(ids)
        committed = [
            s.model_copy(update={"state": TransactionState.COMMITTED})
            for s in statuses
            if s is not None
        ]
        t0 = time.perf_counter()
        async with site.backend.atomic() as batch:  # every status changes at once
            for status in committed:
                batch.put_status(status, settings.status_ttl)
        await asyncio.gather(*waits)
        release = time.perf_counter() - t0
    await client.aclose()
    return {
        "waiters": waiters,
        "per_second": per_second,
        "bound": math.ceil(waiters / SLICE) / interval,
        "per_waiter_polling": waiters / interval,
        "begin_commands": begun,
        "release_seconds": release,
    }


async def main(seconds: float, interval: float) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        print("waiters: skipped, redis-server is not installed")
        return
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="ccat-bench-redis-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = aioredis.Redis.from_url(url)
        deadline = time.monotonic() + 20
        while True:
            try:
                await client.ping()
                break
            except Exception:
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.05)
        await client.aclose()
        print(f"waiters on one site, wait_poll_interval {interval:g} s, window {seconds:g} s")
        print(
            f"{'waiters':>8} {'cmds/s':>8} {'bound':>7} {'polling loop':>13} "
            f"{'ratio':>7} {'at start':>9} {'release s':>10}"
        )
        for waiters in (1, 1000, 5000):
            r = await measure(url, waiters, interval, seconds)
            print(
                f"{r['waiters']:>8.0f} {r['per_second']:>8.1f} {r['bound']:>7.1f} "
                f"{r['per_waiter_polling']:>13.0f} "
                f"{r['per_waiter_polling'] / max(r['per_second'], 1e-9):>6.0f}x "
                f"{r['begin_commands']:>9.0f} {r['release_seconds']:>10.3f}"
            )
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.2)
    options = parser.parse_args()
    asyncio.run(main(options.seconds, options.interval))
