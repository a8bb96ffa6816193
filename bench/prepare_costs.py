"""The drain's client CPU without a database: read_claims and executor.prepare alone.

Builds ``--transactions`` of ``drain_bench``'s transactions, serialises them as
the buffer holds them, then decodes them (``read_claims``) and prepares them
1,000 at a time (``TransactionExecutor.prepare``: checks, plan, first message)
``--repeat`` times, and prints the process CPU per transaction of each stage
(best of the repeats). With ``--callgrind`` valgrind's instrumentation is on
around those stages only (run under ``valgrind --tool=callgrind
--instr-atstart=no``): the instruction count is theirs, which a shared machine
does not disturb. ``--tree DIR`` imports the library from another checkout.

Run: ``valgrind --tool=callgrind --instr-atstart=no python bench/prepare_costs.py
--transactions 3000 --repeat 1 --callgrind [--tree DIR]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
import uuid


def _use_tree(tree: str) -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, tree)


def _instrument(on: bool) -> None:
    flag = "on" if on else "off"
    subprocess.run(["callgrind_control", "-i", flag, str(os.getpid())], check=True)


def main(n: int, repeat: int, callgrind: bool, stage: str, collector: bool = True) -> None:
    """Decode and prepare ``n`` transactions, ``repeat`` times; print CPU per transaction."""
    from drain_bench import transactions
    from sqlalchemy.ext.asyncio import create_async_engine

    from ccat_buffering.buffer._entries import read_claims
    from ccat_buffering.buffer.protocols import Claim
    from ccat_buffering.demo.example import Base
    from ccat_buffering.drain.executor import TransactionExecutor
    from ccat_buffering.write.registry import ModelRegistry

    registry = ModelRegistry.from_base(Base)
    engine = create_async_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    executor = TransactionExecutor(engine, registry)
    txs = transactions(n, uuid.uuid4().hex[:8])
    claims = [Claim(f"r{i}", tx.to_json(), 0.0) for i, tx in enumerate(txs)]
    # Warm-up: caches of the schema, the registry, the compiled shapes.
    parsed, _ = read_claims(claims[:1000], None)
    executor.prepare([tx for _, tx in parsed])
    best = {"decode": float("inf"), "prepare": float("inf")}
    gc.collect()
    if not collector:
        gc.disable()  # the stages' own work alone: a full collection comes when it will
    tracked = len(gc.get_objects())
    if callgrind:
        _instrument(True)
    for _ in range(repeat):
        decoded = []
        cpu = time.process_time()
        if stage in ("both", "decode"):
            for start in range(0, n, 1000):
                parsed, refused = read_claims(claims[start : start + 1000], None)
                assert not refused
                decoded.append([tx for _, tx in parsed])
        else:
            decoded = [txs[start : start + 1000] for start in range(0, n, 1000)]
        mid = time.process_time()
        if stage in ("both", "prepare"):
            for batch in decoded:
                executor.prepare(batch)
                assert executor.preparer._held is not None
                assert executor.preparer._held.first is not None
        end = time.process_time()
        best["decode"] = min(best["decode"], (mid - cpu) / n * 1e6)
        best["prepare"] = min(best["prepare"], (end - mid) / n * 1e6)
    if callgrind:
        _instrument(False)
    gc.enable()
    if not collector:
        kept = (len(gc.get_objects()) - tracked) / n
        print(f"objects the collector tracks, kept per transaction: {kept:.1f}")
    print(f"decode (read_claims): {best['decode']:.1f} us/tx; prepare: {best['prepare']:.1f} us/tx")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--stage", choices=("both", "decode", "prepare"), default="both")
    parser.add_argument("--tree")
    parser.add_argument(
        "--no-gc", action="store_true", help="the collector off during the stages (their own work)"
    )
    args = parser.parse_args()
    if args.tree:
        _use_tree(args.tree)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(args.transactions, args.repeat, args.callgrind, args.stage, not args.no_gc)
