"""The drain's status moves alone: claim, commit and replicate buffered transactions.

Buffers ``--transactions`` of ``drain_bench``'s transactions in a Redis site of
its own, then claims them 1,000 at a time, marks each batch ``committed`` and
``replicated`` (no database), and prints the process CPU per transaction of
that phase. With ``--callgrind`` it switches valgrind's instrumentation on
around the phase only (run it under ``valgrind --tool=callgrind
--instr-atstart=no``): the instruction count is then the phase's, which a
shared machine does not disturb. ``--tree DIR`` imports the library from
another checkout (the editable install's finder is removed), so that two
trees are compared with one virtual environment.

With ``--tracker`` the batches are confirmed as the worker confirms them: by a
``ReplicationTracker`` (``poll_once``, every commit shown) that remembers what
its process committed, rather than by ``manager.replicated`` alone.

Run: ``valgrind --tool=callgrind --instr-atstart=no python bench/status_moves.py
--transactions 2000 --callgrind [--tree DIR] [--tracker]``.
Environment: ``CCAT_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid


def _use_tree(tree: str) -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, tree)


def _instrument(on: bool, pid: int | None = None) -> None:
    flag = "on" if on else "off"
    subprocess.run(["callgrind_control", "-i", flag, str(pid or os.getpid())], check=True)


def _phase_done(phase: str, pid: int | None) -> None:
    # A callgrind dump per phase (its description names it): the counts of each phase apart.
    if pid:
        subprocess.run(
            ["callgrind_control", f"--dump={phase}", str(pid)], check=True, capture_output=True
        )


async def _commandstats(backend: object) -> str:
    info = await backend.client.info("commandstats")  # type: ignore[attr-defined]
    rows = sorted(info.items(), key=lambda kv: -kv[1]["usec"])
    return "\n".join(f"  {k}: calls={v['calls']} usec={v['usec']}" for k, v in rows)


async def main(
    n: int, callgrind: bool, redis_pid: int | None = None, tracker: bool = False
) -> None:
    """Buffer ``n`` transactions, then time their claim, commit and replication."""
    from drain_bench import REDIS_URL, close_backend, transactions

    from ccat_buffering.buffer.manager import TransactionManager
    from ccat_buffering.confirm.replication import (
        ImmediateReplicationChecker,
        ReplicationTracker,
    )
    from ccat_buffering.demo.example import Base
    from ccat_buffering.write.lsn import LSN
    from ccat_buffering.write.registry import ModelRegistry
    from ccat_buffering_redis import RedisBackend

    site = f"moves-{uuid.uuid4().hex[:8]}"
    backend = RedisBackend.from_url(REDIS_URL, site=site)
    manager = TransactionManager(backend, registry=ModelRegistry.from_base(Base))
    confirming = ReplicationTracker(manager, ImmediateReplicationChecker()) if tracker else None
    if confirming is not None:
        await confirming.poll_once()  # the first extends the caches (once per cache_ttl / 3)
    txs = transactions(n, uuid.uuid4().hex[:8])
    for start in range(0, n, 500):
        await manager.buffer_many(txs[start : start + 500])
    try:
        if callgrind:
            _instrument(True)
        if redis_pid:
            await backend.client.config_resetstat()  # type: ignore[attr-defined]
            _instrument(True, redis_pid)
        cpu = time.process_time()
        lsn = 1 << 32
        while deliveries := await manager.claim(1000, 60):
            _phase_done("claim", redis_pid)
            lsn += 4096
            committed = await manager.committed(deliveries, LSN(lsn))
            _phase_done("commit", redis_pid)
            if confirming is not None:
                await confirming.poll_once()
            else:
                await manager.replicated(committed)
            _phase_done("replicate", redis_pid)
        cpu = time.process_time() - cpu
        if callgrind:
            _instrument(False)
        if redis_pid:
            _instrument(False, redis_pid)
            print("Redis commandstats of the phase:\n" + await _commandstats(backend))
    finally:
        await close_backend(backend)
    library = os.path.dirname(os.path.dirname(sys.modules["ccat_buffering"].__file__ or ""))
    print(f"claim, commit, replicate: {cpu / n * 1e6:.1f} us of process CPU per transaction")
    print(f"library from {library}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--tree", help="a checkout to import the library from")
    parser.add_argument(
        "--redis-pid",
        type=int,
        help="a callgrind redis-server (--instr-atstart=no): instrumented during the phase",
    )
    parser.add_argument(
        "--tracker", action="store_true", help="confirm with a ReplicationTracker's poll_once"
    )
    args = parser.parse_args()
    if args.tree:
        _use_tree(args.tree)
    sys.path.insert(0, os.path.join(args.tree or os.path.dirname(__file__) + "/..", "bench"))
    asyncio.run(main(args.transactions, args.callgrind, args.redis_pid, args.tracker))
