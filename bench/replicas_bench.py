"""The cost of acknowledged-means-replicated (issue 20): ``buffer()`` with ``min_replicas=1``.

Starts a throwaway master and replica (``redis-server`` on free loopback
ports, no persistence, removed after) and buffers the same kind of
transaction through two backends of the same master: ``min_replicas=0``
(the baseline) and ``min_replicas=1`` (the script and ``WAIT`` pipelined in
one round trip). One producer (sequential awaits) and 16 producers
(``asyncio.gather``, coalesced), in interleaved rounds (the order alternates),
each with a warm-up; the median rate over the rounds is reported, and the
ratio to the baseline measured in the same run.

Reproduce: ``.venv/bin/python bench/replicas_bench.py [--seconds 1.0] [--rounds 5]``.
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


async def _rate(manager: TransactionManager, producers: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def produce() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await manager.buffer(_transaction(done))
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(produce() for _ in range(producers)))
    return done / (time.perf_counter() - started)


async def main(seconds: float, rounds: int) -> None:
    with master_and_replica() as port:
        url = f"redis://127.0.0.1:{port}/0"
        plain = RedisBackend.from_url(url, site="bench-plain")
        waiting = RedisBackend.from_url(url + "?min_replicas=1", site="bench-replicated")
        try:
            managers = {"min_replicas=0": plain, "min_replicas=1": waiting}
            for producers in (1, 16):
                rates: dict[str, list[float]] = {name: [] for name in managers}
                for backend in managers.values():  # warm-up
                    await _rate(TransactionManager(backend), producers, seconds / 4)
                for r in range(rounds):
                    order = list(managers.items())
                    for name, backend in order if r % 2 == 0 else reversed(order):
                        rates[name].append(
                            await _rate(TransactionManager(backend), producers, seconds)
                        )
                base = statistics.median(rates["min_replicas=0"])
                ours = statistics.median(rates["min_replicas=1"])
                print(
                    f"buffer(), {producers:>2} producer(s): min_replicas=0 {base:,.0f}/s, "
                    f"min_replicas=1 {ours:,.0f}/s, ratio {ours / base:.2f}"
                )
        finally:
            await plain.aclose()
            await waiting.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rounds))
    sys.exit(0)
