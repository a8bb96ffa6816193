"""redis+sentinel:// finds the master through a sentinel and follows a failover."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from redis_servers import redis_sentinel
from services import started

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.config.backends import open_backend
from ccat_buffering.errors import BackendError
from ccat_buffering.testing import new_site_name

from support import observation


async def test_sentinel_discovery_and_failover() -> None:
    with started(redis_sentinel()) as ports:
        url = f"redis+sentinel://127.0.0.1:{ports['sentinel']}/site-buffer"
        backend = open_backend(url, site=new_site_name(), socket_timeout=2)
        manager = TransactionManager(backend)
        first, _ = observation(1)
        await manager.buffer(first)
        master = aioredis.Redis(port=int(ports["master"]))  # type: ignore[call-overload]
        assert await master.llen(backend.keys.buffer) == 1  # type: ignore[attr-defined]
        await master.execute_command("WAIT", 1, 5000)  # the replica has it too
        await master.aclose()

        ports["kill_master"]()  # type: ignore[operator]
        second, _ = observation(2)
        deadline = time.monotonic() + 60
        while True:
            try:
                await manager.buffer(second)
                break
            except BackendError:
                assert time.monotonic() < deadline, "no failover within a minute"
                await asyncio.sleep(0.25)
        stats = await backend.buffer.stats()
        assert stats.depth == 2  # the entry from before the failover, and the new one
        deliveries = await manager.claim(2, 30)
        assert [d.transaction_id for d in deliveries] == [
            first.transaction_id,
            second.transaction_id,
        ]
        await backend.aclose()
