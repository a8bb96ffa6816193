"""The lease renewal kept beside a call ends with the call, even when a renewal eats its cancel.

On Python 3.11 a Redis call cancelled just as its answer arrives returns the
answer (``asyncio.wait_for``); the renewal loop once went on for ever then,
and the call it was kept for never returned (see
``tests/integration/test_link_hang_cycles.py`` for the drain through a hung link).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ccat_buffering.drain._lease_holding import LeaseHolding
from ccat_buffering.testing import new_site_name
from ccat_buffering_memory import MemoryBackend

TTL = 0.3  # a renewal every 0.1 s


class AnswerWins:
    """A lease whose renewal takes ``latency`` s and returns its answer even when cancelled."""

    def __init__(self, lease: Any, latency: float) -> None:
        self.lease = lease
        self.latency = latency
        self.started = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lease, name)

    async def renew(self, holder: str, ttl_seconds: float) -> bool:
        self.started += 1
        answer = asyncio.ensure_future(self._answer(holder, ttl_seconds))
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            return await answer  # the cancellation is lost, as wait_for loses it on 3.11

    async def _answer(self, holder: str, ttl_seconds: float) -> bool:
        await asyncio.sleep(self.latency)
        return bool(await self.lease.renew(holder, ttl_seconds))


async def _call_ending_during_a_renewal(holding: LeaseHolding, lease: AnswerWins) -> None:
    before = lease.started
    async with holding.kept():
        while lease.started == before:  # ends as soon as a renewal is on its way
            await asyncio.sleep(0.005)


async def test_the_renewal_ends_with_the_call_when_a_renewal_eats_the_cancellation() -> None:
    lease = AnswerWins(MemoryBackend(new_site_name()).lease, latency=0.05)
    holding = LeaseHolding(lease, "me", TTL, time.monotonic)
    assert await holding.take()
    for _ in range(5):
        began = time.monotonic()
        await asyncio.wait_for(_call_ending_during_a_renewal(holding, lease), 2.0)
        assert time.monotonic() - began < 1.0
    # Nothing goes on renewing behind the caller's back once its calls are over.
    after = lease.started
    await asyncio.sleep(TTL)
    assert lease.started == after
