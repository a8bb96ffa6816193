"""The worker's drain CPU, per stage, on two source trees in turn (before and after a change).

Each round runs, in a fresh process per tree, ``drain_bench.worker_drain``
(the worker's loop, then a sequential drain for the stage profile) and
``drain_bench.floor_rate`` at batch 1000, against a database of its own; the
trees alternate, so both see the same machine. Prints min / median / max
over the rounds.

Run: ``python bench/drain_compare.py --before <tree> [--after <tree>] [--rounds 5]
[--transactions 3000]``, a tree being a checkout of this repository (``git
worktree add /tmp/before main``); the interpreter is the one running this
script unless the tree has its own ``.venv`` (an editable install there imports
that tree whatever ``PYTHONPATH`` says, so each tree runs with its own).
Environment: ``CCAT_TEST_POSTGRES_URL``, ``CCAT_TEST_REDIS_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path


async def _one(n: int) -> dict[str, object]:
    """One tree's cells (run in the tree's own process, with the tree's own bench)."""
    sys.path.insert(0, str(Path(os.environ["DRAIN_COMPARE_TREE"], "bench")))
    import drain_bench as b
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    from ccat_buffering.drain.database import create_engine
    from ccat_buffering.drain.executor import TransactionExecutor
    from ccat_buffering.write.registry import ModelRegistry

    admin = create_async_engine(b.POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"ccat_bench_{uuid.uuid4().hex[:8]}"
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(b.POSTGRES_URL).set(database=name)
    db_url = url.render_as_string(hide_password=False)
    try:
        engine = create_engine(db_url)
        async with engine.begin() as conn:
            await conn.run_sync(b.Base.metadata.create_all)
        await TransactionExecutor(engine, ModelRegistry.from_base(b.Base)).create_ledger()
        await engine.dispose()
        floor = (await b.floor_rate(url, 1000, max(n // 300, 10)))[0]
        rate, cpu, _ = await b.worker_drain(db_url, n)
        _, _, stages = await b.worker_drain(db_url, n, profile=True)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
    return {
        "floor": floor,
        "rate": rate,
        "cpu": cpu * 1e6,
        "stages": [(k, v * 1e6) for k, v in stages.items()],
    }


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the tree before the change")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transactions", type=int, default=3000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(asyncio.run(_one(args.one))), flush=True)
        return
    trees = {"before": args.before, "after": args.after}
    results: dict[str, list[dict]] = {k: [] for k in trees}  # type: ignore[type-arg]
    for round_ in range(args.rounds):
        for label, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=tree, DRAIN_COMPARE_TREE=tree)
            me = str(Path(__file__).resolve())
            # The tree's own interpreter: an editable install (`make .venv/.installed-dev`)
            # imports its own tree whatever PYTHONPATH says.
            own = Path(tree, ".venv", "bin", "python")
            python = str(own) if own.exists() else sys.executable
            run = [python, me, "--before", "-", "--one", str(args.transactions)]
            done = subprocess.run(run, env=env, capture_output=True, text=True, check=False)
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if not lines:
                print(f"round {round_} {label}: FAILED\n{done.stderr[-2000:]}", flush=True)
                continue
            cell = json.loads(lines[0][len("RESULT ") :])
            results[label].append(cell)
            print(f"round {round_} {label}: {cell['cpu']:.1f} us/tx", flush=True)
    for label, cells in results.items():
        if not cells:
            continue
        print(f"\n{label} ({trees[label]}), {len(cells)} rounds, min / median / max")
        print("  worker CPU per transaction (us):", _spread([c["cpu"] for c in cells]))
        print("  drain() tx/s, batch 1000:", _spread([c["rate"] for c in cells], "{:,.0f}"))
        print("  vs the floor:", _spread([c["rate"] / c["floor"] for c in cells], "{:.2f}x"))
        for i, (stage, _) in enumerate(cells[0]["stages"]):
            print(f"  {stage:<62} {_spread([c['stages'][i][1] for c in cells])}")
        totals = [sum(v for _, v in c["stages"]) for c in cells]
        print(f"  {'total (sequential drain)':<62} {_spread(totals)}")


if __name__ == "__main__":
    main()
