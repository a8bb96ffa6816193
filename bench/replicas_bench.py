"""The cost of acknowledged-means-replicated (issue 20): ``buffer()`` with ``min_replicas=1``.

Starts a throwaway master and replica (``redis-server`` on free loopback
ports, no persistence, removed after) and buffers the same kind of
transaction through two backends of the same master: ``min_replicas=0``
(the baseline) and ``min_replicas=1`` (the script and ``WAIT`` pipelined in
one round trip). One producer (sequential awaits) and 16 producers
(``asyncio.gather``, coalesced).

On a shared machine the rate of either moves by tens of percent from one
second to the next, so a ratio of two separate measurements is mostly noise.
Each round therefore measures both on the same fixed number of operations,
interleaved in small chunks (ABBA order, so neither always goes first), and
takes the ratio within the round; the rounds' ratios are reported as
min/median/max, with the median rates. The throwaway master is emptied
between rounds so that every round starts from the same buffer size.

Reproduce: ``.venv/bin/python bench/replicas_bench.py [--ops 2000] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ccat_buffering.builder import TransactionBuilder
from ccat_buffering.demo._workload import add_observation
from ccat_buffering.manager import TransactionManager
from ccat_buffering.models import Transaction
from ccat_buffering_redis import RedisBackend


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(check: object, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what} did not come up")


@contextmanager
def master_and_replica() -> Iterator[int]:
    """A master and its replica on loopback; yields the master's port."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed")
    workdir = Path(tempfile.mkdtemp(prefix="ccat-bench-replicas-"))
    master, replica = _free_port(), _free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [subprocess.Popen([binary, "--port", str(master), *common], **quiet)]
    try:
        _wait(lambda: redis.Redis(port=master).ping(), "the master")
        processes.append(
            subprocess.Popen(
                [binary, "--port", str(replica), *common, "--replicaof", "127.0.0.1", str(master)],
                **quiet,
            )
        )
        _wait(
            lambda: redis.Redis(port=replica).info("replication")["master_link_status"] == "up",
            "the replica",
        )
        yield master
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _transaction(i: int) -> Transaction:
    tx = TransactionBuilder("start_observation")
    add_observation(tx, i, name=f"pkg-{i}", start_time=dt.datetime.now(dt.UTC))
    return tx.build()


CHUNKS = 10
"""Chunks per round and variant, alternated ABBA: both see the same moments of the machine."""


async def _chunk(manager: TransactionManager, producers: int, ops: int, first: int) -> float:
    """Buffer ``ops`` transactions from ``producers`` tasks; the seconds it took."""
    numbers = iter(range(first, first + ops))

    async def produce() -> None:
        for i in numbers:
            await manager.buffer(_transaction(i))

    started = time.perf_counter()
    await asyncio.gather(*(produce() for _ in range(producers)))
    return time.perf_counter() - started


async def _round(
    managers: dict[str, TransactionManager], producers: int, ops: int
) -> dict[str, float]:
    """One round: ``ops`` operations per variant in interleaved chunks; each variant's rate."""
    spent = dict.fromkeys(managers, 0.0)
    names = list(managers)
    size = max(1, ops // CHUNKS)
    for chunk in range(CHUNKS):
        order = names if chunk % 2 == 0 else names[::-1]
        for name in order:
            spent[name] += await _chunk(managers[name], producers, size, chunk * size)
    return {name: size * CHUNKS / seconds for name, seconds in spent.items()}


def _spread(values: list[float], form: str) -> str:
    return "/".join(format(v, form) for v in (min(values), statistics.median(values), max(values)))


async def main(ops: int, rounds: int) -> None:
    import redis

    with master_and_replica() as port:
        url = f"redis://127.0.0.1:{port}/0"
        plain = RedisBackend.from_url(url, site="bench-plain")
        waiting = RedisBackend.from_url(url + "?min_replicas=1", site="bench-replicated")
        try:
            managers = {
                "min_replicas=0": TransactionManager(plain),
                "min_replicas=1": TransactionManager(waiting),
            }
            print(f"{rounds} rounds of {ops} buffer() calls per variant; min/median/max")
            for producers in (1, 16):
                await _round(managers, producers, ops // 10)  # warm-up
                rates: dict[str, list[float]] = {name: [] for name in managers}
                ratios: list[float] = []
                for _ in range(rounds):
                    # The same starting point each round: an empty throwaway master.
                    redis.Redis(port=port).flushdb()
                    rate = await _round(managers, producers, ops)
                    for name, value in rate.items():
                        rates[name].append(value)
                    ratios.append(rate["min_replicas=1"] / rate["min_replicas=0"])
                print(
                    f"buffer(), {producers:>2} producer(s): "
                    f"min_replicas=0 {_spread(rates['min_replicas=0'], ',.0f')}/s, "
                    f"min_replicas=1 {_spread(rates['min_replicas=1'], ',.0f')}/s, "
                    f"ratio (per round) {_spread(ratios, '.2f')}"
                )
        finally:
            await plain.aclose()
            await waiting.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="buffer() calls per variant a round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.ops, args.rounds))
    sys.exit(0)
