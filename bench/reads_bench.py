"""Reads against the backlog: ``Reads.list`` with 0, 1,000, 10,000 and 40,000 buffered records.

One PostgreSQL database (a fresh one, dropped at the end) holds 10,000 rows of
a file model indexed by package. Each site buffers N records of that model:
creates of files of other packages, updates of other packages' rows (one in
ten), and five creates in its target package. The filter
``list("BenchFile", package=<target>)`` matches 10 records at every site: 10
rows in the database at the site with none buffered, 5 rows and 5 buffered
creates at the others. The sites are measured in interleaved rounds in the
same run, and each ratio is the median time at N over the median at 0.

Goal: every ratio <= 3x. Backends: Redis (``--redis-url``, skipped when it
does not answer) and memory.

Run: ``python bench/reads_bench.py [--rounds R] [--sizes 1000,10000,40000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import Integer, String, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.protocols import Backend
from ccat_buffering.read.reads import Reads
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend

POSTGRES_URL = os.environ.get(
    "CCAT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CCAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
DATABASE_ROWS = 10_000
MATCHING = 10
PER_TRANSACTION = 200


class Base(DeclarativeBase):
    """The bench's schema."""


class BenchFile(Base):
    """A file of a package."""

    __tablename__ = "bench_file"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    package: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(Integer)


def _file(package: str, i: int, key: str | None = None) -> dict[str, object]:
    row: dict[str, object] = {"package": package, "path": f"/data/{package}/{i}.fits"}
    row["size_bytes"] = 1000 + i
    if key is not None:
        row["id"] = key
    return row


@asynccontextmanager
async def database(sizes: list[int]) -> AsyncIterator[tuple[AsyncEngine, list[str]]]:
    """A fresh database with the rows of every site, and the ids of the rows others update."""
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"ccat_bench_{uuid.uuid4().hex[:10]}"
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            rows = []
            for size in sizes:
                in_db = MATCHING if size == 0 else MATCHING // 2
                rows += [_file(f"target-{size}", i, str(uuid.uuid4())) for i in range(in_db)]
            others = [str(uuid.uuid4()) for _ in range(DATABASE_ROWS - len(rows))]
            rows += [_file(f"pkg-{i % 1000}", i, key) for i, key in enumerate(others)]
            await conn.execute(insert(BenchFile), rows)
            await conn.execute(text("ANALYZE bench_file"))
        yield engine, others
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def fill(backend: Backend, registry: ModelRegistry, size: int, others: list[str]) -> None:
    """Buffer ``size`` records: five creates in the target package, the rest elsewhere."""
    if size == 0:
        return
    manager = TransactionManager(backend, registry=registry)
    updates = size // 10
    creates = [_file(f"target-{size}", 100 + i) for i in range(MATCHING // 2)]
    creates += [_file(f"buffered-{i % 2000}", i) for i in range(size - updates - len(creates))]
    transactions = []
    for start in range(0, len(creates), PER_TRANSACTION):
        tx = TransactionBuilder("register_files")
        tx.bulk_create(BenchFile, creates[start : start + PER_TRANSACTION])
        transactions.append(tx.build())
    for start in range(0, updates, PER_TRANSACTION):
        tx = TransactionBuilder("resize_files")
        stop = min(start + PER_TRANSACTION, updates)
        for key in others[start:stop]:
            tx.update(BenchFile, key, {"size_bytes": 7})
        transactions.append(tx.build())
    for start in range(0, len(transactions), 20):
        await manager.buffer_many(transactions[start : start + 20])


async def measure(sites: dict[int, Reads], rounds: int) -> dict[int, float]:
    """Median seconds of one filtered ``list`` per site, over interleaved rounds."""
    times: dict[int, list[float]] = {size: [] for size in sites}
    for size, reads in sites.items():  # warm up connections and plans
        found = await reads.list("BenchFile", package=f"target-{size}")
        assert len(found) == MATCHING, (size, len(found))
    for _ in range(rounds):
        for size, reads in sites.items():
            began = time.perf_counter()
            await reads.list("BenchFile", package=f"target-{size}")
            times[size].append(time.perf_counter() - began)
    return {size: statistics.median(values) for size, values in times.items()}


async def open_backends(kind: str, sizes: list[int]) -> dict[int, Backend]:
    """One backend (one site) per size."""
    backends: dict[int, Backend] = {}
    for size in sizes:
        site = f"bench-reads-{uuid.uuid4().hex[:8]}"
        if kind == "memory":
            backends[size] = MemoryBackend(site)
        else:
            from ccat_buffering_redis import RedisBackend

            backends[size] = RedisBackend.from_url(REDIS_URL, site=site)
    return backends


async def forget(backend: Backend) -> None:
    """Delete the keys of a bench site on Redis."""
    client = getattr(backend, "client", None)
    if client is None:
        return
    keys = [k async for k in client.scan_iter(match=f"site:{{{backend.site}}}:*")]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])


async def main(rounds: int, sizes: list[int]) -> list[tuple[str, str, str, str]]:
    """Measure every backend; return the table's rows."""
    sizes = [0, *sizes]
    registry = ModelRegistry([BenchFile])
    rows: list[tuple[str, str, str, str]] = []
    async with database(sizes) as (engine, others):
        for kind in ("redis", "memory"):
            try:
                backends = await open_backends(kind, sizes)
                await backends[sizes[0]].cache.list("BenchFile")
            except Exception as exc:  # a missing server: say so and go on
                print(f"reads on {kind}: skipped ({type(exc).__name__}: {exc})")
                continue
            try:
                for size, backend in backends.items():
                    await fill(backend, registry, size, others)
                sites = {s: Reads(b.cache, registry, engine) for s, b in backends.items()}
                medians = await measure(sites, rounds)
            finally:
                for backend in backends.values():
                    await forget(backend)
                    await backend.aclose()
            base = medians[0]
            for size in sizes[1:]:
                rows.append(
                    (
                        f"list() on {kind}, {size:,} buffered",
                        f"{medians[size] * 1000:.2f} ms",
                        f"{base * 1000:.2f} ms",
                        f"{medians[size] / base:.2f}x",
                    )
                )
    header = ("benchmark (filter matching 10)", "ours", "none buffered", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print(f"reads: {DATABASE_ROWS:,} rows in PostgreSQL, median of {rounds} rounds; goal <= 3x")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--sizes", default="1000,10000,40000")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, [int(s) for s in args.sizes.split(",")]))
