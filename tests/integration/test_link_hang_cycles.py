"""A link that hangs and answers again, over and over: the drain resumes after every hang.

The server never sees the bytes of a call made while the link hangs, so only
the client's watchdog ends it; the lease renewal that kept the site's lease
during the call (:meth:`LeaseHolding.kept`) must then end with it. On Python
3.11 a Redis call cancelled just as its answer arrives returns the answer
instead of raising (``asyncio.wait_for``, which redis-py waits with), and a
renewal loop that relied on that one cancellation renewed for ever: the
batch's call (or the outage probe) never returned and the drain never
resumed after the link answered (about one hang in four in
``bench/wan_bench.py``, whose statement timeout, 5 s, is a third of the lease,
so that the watchdog fires as a renewal is on its way).

Here too the statement timeout is a third of the lease, the buffer is a real
Redis, and each renewal's answer comes a little late (a busy site host) and
wins over a cancellation as it can on 3.11, so that every hang meets that
race; the hang-and-answer cycle is repeated, and after each one the drain
must resume within a bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest_asyncio
from pg import fresh_database
from services import REDIS_URL, forget_site, redis_client
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.demo.example import Base
from ccat_buffering.drain._link import LinkTimeouts
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor, ProcessorState
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_redis import RedisBackend

from support import ledger_count, make_schema, observation, units_in_order

STATEMENT = 1.0
TIMEOUTS = LinkTimeouts(
    connect=STATEMENT, statement=STATEMENT, lock=1.0, idle_in_transaction=2.0, keepalive_idle=1.0
)
LEASE_TTL = 3 * STATEMENT  # a renewal every statement timeout, as with the defaults' 15 s / 5 s
RENEWAL_LATENCY = 0.3
CYCLES = 4
PER_CYCLE = 15
HANG = 2.0
RESUME_WITHIN = 8.0
"""Seconds after the link answers: a probe (up to a connect timeout), a batch, the backoff."""


class LateRenewals:
    """The site's Redis lease, each renewal's answer ``latency`` s late and winning over a cancel.

    What ``asyncio.wait_for`` does on Python 3.11 when a cancellation meets
    the answer: the answer is returned and the cancellation is lost (the task
    stays ``cancelling()``).
    """

    def __init__(self, lease: Any, latency: float) -> None:
        self.lease = lease
        self.latency = latency

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lease, name)

    async def renew(self, holder: str, ttl_seconds: float) -> bool:
        answer = asyncio.ensure_future(self._answer(holder, ttl_seconds))
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            return await answer

    async def _answer(self, holder: str, ttl_seconds: float) -> bool:
        renewed = bool(await self.lease.renew(holder, ttl_seconds))
        await asyncio.sleep(self.latency)
        return renewed


@dataclass
class HangingSite:
    relay: LoopbackRelay
    direct: AsyncEngine
    manager: TransactionManager
    processor: BackgroundProcessor


@pytest_asyncio.fixture
async def hanging_site() -> AsyncIterator[HangingSite]:
    client = await redis_client()
    async with fresh_database() as url:
        target = make_url(url).set(drivername="postgresql+psycopg")
        relay = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432, delay=0.005)
        await relay.start()
        direct = create_engine(url)
        await make_schema(direct)
        registry = ModelRegistry.from_base(Base)
        await TransactionExecutor(direct, registry).create_ledger()
        proxied = target.set(host="127.0.0.1", port=relay.port)
        engine = create_engine(proxied.render_as_string(hide_password=False), timeouts=TIMEOUTS)
        backend = RedisBackend.from_url(REDIS_URL, site=new_site_name())
        manager = TransactionManager(backend, registry=registry)
        processor = BackgroundProcessor(
            manager,
            TransactionExecutor(engine, registry, timeouts=TIMEOUTS),
            batch_size=10,
            lease_ttl=LEASE_TTL,
            poll_interval=0.01,
            outage_base_delay=0.5,
            outage_max_delay=2.0,
            probe_interval=0.2,
        )
        processor.lease.lease = LateRenewals(processor.lease.lease, RENEWAL_LATENCY)  # type: ignore[assignment]
        try:
            yield HangingSite(relay, direct, manager, processor)
        finally:
            await processor.stop()
            await relay.stop()
            await backend.aclose()
            await forget_site(client, backend.keys.pattern())
            await client.aclose()  # type: ignore[attr-defined]
            await engine.dispose()
            await direct.dispose()


async def _until(condition: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    began = time.monotonic()
    while not await condition():
        assert time.monotonic() - began < seconds, f"not within {seconds:g} s: {what}"
        await asyncio.sleep(0.02)


async def _hang_then_answer(site: HangingSite, cycle: int) -> None:
    """Hang; buffer a few; the hung call must end; answer; the drain must catch up."""
    # Hung before the transactions arrive: the batch that claims them meets it.
    site.relay.hang()
    outages = site.processor.counters.outages
    first = cycle * PER_CYCLE
    await site.manager.buffer_many([observation(i)[0] for i in range(first, first + PER_CYCLE)])

    async def call_ended() -> bool:
        # The batch's call came back (its connection discarded) and paused the queue.
        return site.processor.counters.outages > outages

    await _until(call_ended, STATEMENT + 3, f"cycle {cycle}: the hung call ended")
    health = await site.processor.health()
    assert health.state is ProcessorState.PAUSED, health
    # The link stays hung for a while (batches and probes meet it), then answers.
    await asyncio.sleep(HANG)
    site.relay.answer()

    async def caught_up() -> bool:
        return site.processor.counters.processed == first + PER_CYCLE

    try:
        await _until(caught_up, RESUME_WITHIN, f"cycle {cycle}: drained after the answer")
    except AssertionError as exc:
        raise AssertionError(f"{exc} ({(await site.processor.health()).cause})") from None


async def test_the_drain_resumes_after_every_hang(hanging_site: HangingSite) -> None:
    site = hanging_site
    site.processor.start()
    for cycle in range(CYCLES):
        await _hang_then_answer(site, cycle)
    await site.processor.stop()
    total = CYCLES * PER_CYCLE
    # Nothing lost, nothing applied twice, in buffer order, nothing dead-lettered.
    assert await units_in_order(site.direct) == list(range(total))
    assert await ledger_count(site.direct) == total
    stats = await site.manager.backend.buffer.stats()
    assert (stats.depth, stats.in_flight, stats.dead_letters) == (0, 0, 0)
