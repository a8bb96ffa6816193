"""A processor process killed with SIGKILL loses nothing and applies nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from services import REDIS_URL, forget_site, redis_client, require_redis
from sqlalchemy import func, literal_column, select

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.drain.database import create_engine, ledger_table
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_redis import RedisBackend

from support import make_schema, observation

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from ccat_buffering.demo.example import Base
    from ccat_buffering.drain.database import create_engine
    from ccat_buffering.drain.executor import TransactionExecutor
    from ccat_buffering.demo.example import Base
    from ccat_buffering.drain.database import create_engine
    from ccat_buffering.drain.executor import TransactionExecutor
    from ccat_buffering.buffer.manager import TransactionManager
    from ccat_buffering.drain.processor import BackgroundProcessor
    from ccat_buffering.write.registry import ModelRegistry
    from ccat_buffering_redis import RedisBackend

    redis_url, site, db_url, stop_at = sys.argv[1:5]

    async def freeze(*args, **kwargs):
        print(stop_at, flush=True)
        await asyncio.sleep(3600)  # killed here, before anything is acknowledged

    async def main():
        backend = RedisBackend.from_url(redis_url, site=site)
        registry = ModelRegistry.from_base(Base)
        executor = TransactionExecutor(create_engine(db_url), registry)
        manager = TransactionManager(backend, registry=registry)
        processor = BackgroundProcessor(manager, executor, batch_size=5, lease_ttl=1.0)
        if stop_at == "claimed":
            executor.execute_batch = freeze
        else:
            manager.committed = freeze
        await processor.run_once()

    asyncio.run(main())
    """
)


async def _redis_or_skip() -> None:
    await require_redis()


@pytest.mark.parametrize("stop_at", ["claimed", "committed"])
async def test_killed_processor_loses_nothing_and_applies_once(
    tmp_path: Path, stop_at: str
) -> None:
    await _redis_or_skip()
    site = new_site_name()
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    engine = create_engine(db_url)
    await make_schema(engine)
    registry = ModelRegistry.from_base(Base)
    executor = TransactionExecutor(engine, registry)
    await executor.create_ledger()
    backend = RedisBackend.from_url(REDIS_URL, site=site)
    manager = TransactionManager(backend, registry=registry)
    txs = [observation(i)[0] for i in range(12)]
    await manager.buffer_many(txs)

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, REDIS_URL, site, db_url, stop_at],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
        assert line.strip() == stop_at
        stats = await backend.buffer.stats()
        assert stats.in_flight == 5  # claimed, not acknowledged
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)

    survivor = BackgroundProcessor(manager, executor, lease_ttl=1.0)
    deadline = time.monotonic() + 30
    applied = 0
    while True:
        applied += await survivor.run_once()
        stats = await backend.buffer.stats()
        if stats.depth == 0 and stats.in_flight == 0:
            break
        assert time.monotonic() < deadline, (stats, survivor.state)
        await asyncio.sleep(0.05)  # the dead holder's lease runs out by itself

    async with engine.connect() as conn:
        order = select(ExecutedObsUnit.obs_unit_id).order_by(literal_column("rowid"))
        units = (await conn.execute(order)).scalars().all()
        ledger = (await conn.execute(select(func.count()).select_from(ledger_table))).scalar()
    assert list(units) == list(range(12))  # each exactly once, in buffer order
    assert ledger == 12
    statuses = await backend.status.get_many([tx.transaction_id for tx in txs])
    assert all(s is not None and s.state is TransactionState.COMMITTED for s in statuses)
    if stop_at == "committed":
        assert applied == 12  # all settled by the survivor; the first five via the ledger
    await backend.aclose()
    client = await redis_client()
    await forget_site(client, backend.keys.pattern())
    await client.aclose()  # type: ignore[attr-defined]
    await engine.dispose()
