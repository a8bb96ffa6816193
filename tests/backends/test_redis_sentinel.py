"""redis+sentinel:// finds the master through a sentinel and follows a failover."""

from __future__ import annotations

import asyncio
import time

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis_servers import client_of, deaf_sentinel, redis_sentinel
from servers import wait_for
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


def _failed_over(ports: dict[str, object]) -> None:
    """``SENTINEL FAILOVER`` (once the sentinel knows the replica), until it has switched."""

    def accepted() -> bool:
        try:
            client_of(int(ports["sentinel"])).execute_command(  # type: ignore[call-overload]
                "SENTINEL", "FAILOVER", "site-buffer"
            )
        except redis.exceptions.ResponseError:  # NOGOODSLAVE: the replica not known yet
            return False
        return True

    wait_for(accepted, "a failover accepted")
    # SENTINEL MASTER, not GET-MASTER-ADDR-BY-NAME: the latter names the promoted
    # replica before the switch, while the former still names the old master at
    # the old epoch (discovery follows that window as redis-py does; see the docs).
    wait_for(lambda: _names(int(ports["sentinel"]))[0] == ports["replica"], "the switch")  # type: ignore[call-overload]


def _names(sentinel: int) -> tuple[int, int]:
    """The port of the master ``sentinel`` names, and its config-epoch."""
    state = client_of(sentinel).sentinel_master("site-buffer")
    return int(state["port"]), int(state["config-epoch"])


async def test_a_stale_sentinel_does_not_send_writers_to_the_old_master() -> None:
    with started(redis_sentinel()) as ports:
        old, new, fresh = int(ports["master"]), int(ports["replica"]), int(ports["sentinel"])  # type: ignore[call-overload]
        _failed_over(ports)
        # The replaced master stays a master for about 8 s before Sentinel demotes it.
        with deaf_sentinel(old) as stale:
            assert _names(stale) == (old, 0)
            stock = Sentinel([("127.0.0.1", stale), ("127.0.0.1", fresh)], socket_timeout=2)  # type: ignore[no-untyped-call]
            assert await stock.discover_master("site-buffer") == ("127.0.0.1", old)  # type: ignore[no-untyped-call]
            assert client_of(old).info("replication")["role"] == "master"

            url = f"redis+sentinel://127.0.0.1:{stale},127.0.0.1:{fresh}/site-buffer"
            backend = open_backend(url, site=new_site_name(), socket_timeout=2)
            manager, write = TransactionManager(backend), observation(1)[0]
            deadline = time.monotonic() + 5
            while True:  # refused while no sentinel names a master that says so
                try:
                    await manager.buffer(write)
                    break
                except BackendError:
                    assert time.monotonic() < deadline, "the sentinels never answered"
                    await asyncio.sleep(0.1)
            key = backend.keys.buffer  # type: ignore[attr-defined]
            held = {port: client_of(port).llen(key) for port in (old, new)}
            said = {"stale": _names(stale), "fresh": _names(fresh)}
            assert held == {old: 0, new: 1}, f"old {old}, new {new}: {held}; sentinels: {said}"
            assert said["stale"] == (old, 0)  # stale all along
            await backend.aclose()
            await stock.aclose()
