"""Every benchmark in one run, and the tables of ``docs/benchmarks.rst`` from that run.

Each figure is measured in the same run as its baseline, in interleaved
rounds, so the ratio holds on a shared, noisy machine even where the absolute
rates do not.

The sections, each skipped with the reason when its server is missing:

* **embedded**: ``TransactionManager.buffer()`` on the memory backend against
  serialising the transaction anew and appending it to a deque (``buffer()``
  gets transactions as ``build()`` returns them, and sends the JSON that
  ``build()`` made when it checked the size); the processor
  draining into SQLite in batches of 100 (ledger on, and off) against the
  origin's shape, one transaction per claim and commit.
* **redis** (:mod:`redis_bench`): ``submit()``/``buffer()`` on Redis against the
  one-EVALSHA limit and the origin's flows, latency, memory per transaction.
* **drain** (:mod:`drain_bench`), **replication** (:mod:`replication_bench`),
  **wan** (:mod:`wan_bench`: the drain through a delay relay against the
  one-round-trip floor, the default settings against the floor at the batch
  size they chose), **reads** (:mod:`reads_bench`) and **status**
  (:mod:`status_bench`: ``status`` with the main database 200 ms away and
  ``status --audit`` by buffer size).

**The result format.** A benchmark's ``main`` (``run`` for ``redis_bench``)
prints its own table and returns a list of :class:`_ratios.Row`: a name,
min / median / max over interleaved rounds, the unit (``x`` for a ratio) and
what it is compared with, plus min / median / max of the per-round ratio
where the value is not itself one. Build rows with ``Row.of(name, values,
unit=..., baseline=..., ratio=...)``; see ``bench/_ratios.py``. ``run.py``
prints every row again at the end, and with ``--rst`` writes each section's
rows as a ``list-table`` and its printed output as a literal block to the
file that ``docs/benchmarks.rst`` includes (``docs/_bench_results.rst``), with
the command and the machine: every number in that page comes from one run.
A benchmark that returns nothing (or rows of text) still has its printed
output in the file. With ``--only``, an existing file keeps its other sections
as their runs left them; each section that ran is replaced and stamped with
this run's command and time.

Run: ``make bench``, or ``python bench/run.py [--rounds R] [--only a,b]
[--rst docs/_bench_results.rst] [--transactions N] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import io
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _ratios import Row, print_rows, rst_table

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.demo._workload import add_observation
from ccat_buffering.demo.example import Base
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.write._transaction_json import plain_json
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend


def _transactions(n: int, offset: int = 0) -> list[Transaction]:
    out = []
    for i in range(offset, offset + n):
        tx = TransactionBuilder("start_observation")
        add_observation(tx, i, name=f"pkg-{i}", start_time=dt.datetime.now(dt.UTC))
        out.append(tx.build())
    return out


async def _buffer_round(n: int) -> tuple[float, float]:
    """Ours and the baseline, tx/s, one round."""
    txs = _transactions(n)
    queue: collections.deque[str] = collections.deque()
    began = time.perf_counter()
    for tx in txs:
        # Made anew: to_json() would return the text build() kept.
        queue.append(plain_json(tx) or tx.model_dump_json())
    baseline = n / (time.perf_counter() - began)
    manager = TransactionManager(MemoryBackend("bench"))
    began = time.perf_counter()
    for tx in txs:
        await manager.buffer(tx)
    return n / (time.perf_counter() - began), baseline


async def _drain_rate(n: int, batch_size: int, ledger: bool, workdir: Path) -> float:
    path = workdir / f"drain-{batch_size}-{ledger}-{time.monotonic_ns()}.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    registry = ModelRegistry.from_base(Base)
    executor = TransactionExecutor(engine, registry, ledger=ledger)
    await executor.create_ledger()
    manager = TransactionManager(MemoryBackend("bench"), registry=registry)
    await manager.buffer_many(_transactions(n))
    processor = BackgroundProcessor(manager, executor, batch_size=batch_size)
    began, done = time.perf_counter(), 0
    while done < n:
        done += await processor.run_once()
    await engine.dispose()
    return n / (time.perf_counter() - began)


async def embedded(n: int, rounds: int) -> list[Row]:
    """The memory backend and SQLite, ours against the baselines in interleaved rounds."""
    buffered: list[tuple[float, float]] = []
    drains: dict[str, list[float]] = {"single": [], "on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for _ in range(rounds):
            buffered.append(await _buffer_round(n))
            drains["single"].append(await _drain_rate(max(n // 10, 100), 1, True, workdir))
            drains["on"].append(await _drain_rate(n, 100, True, workdir))
            drains["off"].append(await _drain_rate(n, 100, False, workdir))
    single = drains["single"]
    rows = [
        Row.of(
            "buffer() on memory",
            [o for o, _ in buffered],
            unit="tx/s",
            baseline="deque.append(JSON made anew)",
            ratio=[o / b for o, b in buffered],
        ),
        *(
            Row.of(
                f"drain into SQLite, batch 100, ledger {key}",
                drains[key],
                unit="tx/s",
                baseline="one per claim and commit",
                ratio=[a / b for a, b in zip(drains[key], single, strict=True)],
            )
            for key in ("on", "off")
        ),
    ]
    print(f"memory backend + SQLite, {n} transactions, {rounds} interleaved rounds")
    print_rows(rows)
    return rows


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, out: Any) -> None:
        self.out, self.kept = out, io.StringIO()

    def write(self, text: str) -> int:
        self.out.write(text)
        return self.kept.write(text)

    def flush(self) -> None:
        self.out.flush()


@dataclass
class Section:
    """One benchmark's part of the run."""

    key: str
    title: str
    command: str
    run: Callable[[], Awaitable[Any]]
    rows: list[Row] = field(default_factory=list)
    output: str = ""
    seconds: float = 0.0


def _sections(args: argparse.Namespace) -> list[Section]:
    # Imported here: each pulls its own drivers, and a section left out needs none of them.
    import drain_bench
    import reads_bench
    import redis_bench
    import replication_bench
    import status_bench
    import tracing_bench
    import waiters_bench
    import wan_bench

    n, rounds = args.transactions, args.rounds
    rtts = [0, 200] if args.quick else [0, 50, 200, 500]
    sizes = [3000, 10000] if args.quick else [30000, 100000]
    opts = redis_bench.Options.from_args(args)
    return [
        Section(
            "embedded",
            "Embedded default (memory backend, SQLite)",
            f"bench/run.py --only embedded --transactions {n} --rounds {rounds}",
            lambda: embedded(n, rounds),
        ),
        Section(
            "redis",
            "Buffering on Redis",
            f"bench/redis_bench.py --seconds {opts.seconds} --rounds {opts.rounds} "
            f"--memory-transactions {opts.memory_transactions}",
            lambda: redis_bench.run(opts),
        ),
        Section(
            "drain",
            "PostgreSQL drain",
            f"bench/drain_bench.py --transactions {n}",
            lambda: drain_bench.main(n),
        ),
        Section(
            "replication",
            "Replication",
            "bench/replication_bench.py --transactions 1000",
            lambda: replication_bench.main(1000),
        ),
        Section(
            "wan",
            "The drain over a long-haul link",
            f"bench/wan_bench.py --rtt {','.join(map(str, rtts))}",
            lambda: wan_bench.main(rtts),
        ),
        Section(
            "reads",
            "Reads",
            "bench/reads_bench.py --rounds 200 --sizes 1000,10000,40000",
            lambda: reads_bench.main(200, [1000, 10000, 40000]),
        ),
        Section(
            "status",
            "Operator reads: status and status --audit",
            f"bench/status_bench.py --rtt 200 --rounds {rounds} "
            f"--audit-sizes {','.join(map(str, sizes))}",
            lambda: status_bench.main(200.0, rounds, sizes),
        ),
        Section(
            "waiters",
            "Waiting callers",
            "bench/waiters_bench.py --seconds 5 --interval 0.2",
            lambda: waiters_bench.main(5.0, 0.2),
        ),
        Section(
            "tracing",
            "What tracing costs a submit",
            "bench/tracing_bench.py --transactions 500 --rounds 21",
            lambda: tracing_bench.main(500, 21),
        ),
    ]


def _machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, load average {load} at the end"
    )


def _section_rst(section: Section, stamp: str | None = None) -> list[str]:
    lines = [section.title, "~" * len(section.title), ""]
    if stamp:
        lines += [stamp, ""]
    lines += [f"``{section.command}`` ({section.seconds:.0f} s):", ""]
    if section.rows:
        return [
            *lines,
            rst_table(section.rows, section.title),
            "",
        ]  # its printed table says the same
    text = section.output.strip("\n") or "(no output)"
    lines += [".. code-block:: text", ""]
    lines += [("   " + line).rstrip() for line in text.splitlines()]
    return [*lines, ""]


def _rst(sections: list[Section], command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        ".. Generated by bench/run.py: do not edit; run it again.",
        "",
        f"Measured by ``{command}`` on {when}, on {_machine()}.",
        "",
    ]
    for section in sections:
        lines += _section_rst(section)
    return "\n".join(lines)


_TITLE = re.compile(r"^(?P<title>[^\n]+)\n(?P<rule>~+)\n", re.MULTILINE)


def _blocks(text: str) -> tuple[str, dict[str, str]]:
    """A results file's head and its sections' text, by title."""
    found = [m for m in _TITLE.finditer(text) if len(m["rule"]) == len(m["title"])]
    if not found:
        return text, {}
    ends = [m.start() for m in found[1:]] + [len(text)]
    return text[: found[0].start()], {
        m["title"]: text[m.start() : end] for m, end in zip(found, ends, strict=True)
    }


def _merged(old: str, every: list[Section], ran: list[Section], command: str) -> str:
    """``old`` with the sections that ran replaced, each stamped with this run's command and
    time; the others (and their stamps) kept as they were, in the order of ``every``."""
    head, blocks = _blocks(old)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    stamp = f"This section: ``{command}`` on {when}, on {_machine()}."
    head = head.replace("Measured by ``", "Measured, except where a section says otherwise, by ``")
    new = {s.title: "\n".join(_section_rst(s, stamp)) + "\n" for s in ran}
    parts = [head.rstrip("\n") + "\n\n"]
    for section in every:
        block = new.get(section.title) or blocks.get(section.title)
        if block:
            parts.append(block.rstrip("\n") + "\n\n")
    return "".join(parts).rstrip("\n")


async def _awaited(run: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    return await asyncio.wait_for(run(), timeout)


def main(argv: list[str] | None = None) -> None:
    import redis_bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=4000)
    parser.add_argument("--only", default="", help="Sections to run, comma-separated.")
    parser.add_argument("--rst", type=Path, help="Write the docs' results file here.")
    parser.add_argument(
        "--quick", action="store_true", help="Fewer round-trip times and smaller audits."
    )
    parser.add_argument(
        "--section-timeout", type=float, default=1500.0, help="Seconds a section may take."
    )
    redis_bench.add_arguments(parser)
    args = parser.parse_args(argv)
    wanted = {s for s in args.only.split(",") if s}
    every = _sections(args)
    sections = [s for s in every if not wanted or s.key in wanted]
    for section in sections:
        print(f"\n== {section.title}", flush=True)
        tee = _Tee(sys.stdout)
        began = time.perf_counter()
        with contextlib.redirect_stdout(tee):
            try:
                result: Any = asyncio.run(_awaited(section.run, args.section_timeout))
            except TimeoutError:  # a benchmark that hangs must not take the others with it
                print(f"{section.title}: stopped after {args.section_timeout:.0f} s (hung)")
                result = None
            except Exception as exc:  # a missing server: say so and go on
                print(f"{section.title}: skipped ({type(exc).__name__}: {exc})")
                result = None
        section.seconds = time.perf_counter() - began
        section.output = tee.kept.getvalue()
        section.rows = [r for r in result or [] if isinstance(r, Row)]
    rows = [r for s in sections for r in s.rows]
    if rows:
        print("\n== every figure (min / median / max over interleaved rounds)")
        print_rows(rows)
    if args.rst is not None:
        command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        if wanted and args.rst.exists():  # the other sections stay as their own runs left them
            text = _merged(args.rst.read_text(), every, sections, command.strip())
        else:
            text = _rst(sections, command.strip())
        args.rst.write_text(text + "\n")
        print(f"\nwrote {args.rst}")
    print(f"{len(sections)} section(s) in {sum(s.seconds for s in sections):.0f} s")


if __name__ == "__main__":
    main()
