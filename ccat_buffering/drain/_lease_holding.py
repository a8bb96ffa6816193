"""A processor's hold on its site's lease: taken, renewed, and kept while a call waits.

One processor drains a site at a time, so order holds. The lease lasts
``ttl`` seconds unless renewed; the holder renews it once a third of that has
passed, between batches, and beside any call that waits on the main database
(a hung link must not cost the lease: the next holder would recover claims
this one still works on).

The renewal beside a call must end when the call does, even when the call
ends just as a renewal is on its way to Redis. A cancellation can be lost
there: on Python 3.11, ``asyncio.wait_for`` (which redis-py waits with)
returns the call's result instead of raising when the cancellation and the
answer arrive together. A renewal loop that relied on that one cancellation
went on renewing for ever, and the call it was kept for never returned; that
race is likeliest exactly when a hung link's statement timeout and the
renewal interval (a third of the lease) coincide.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from ccat_buffering.buffer.protocols import ProcessorLease
from ccat_buffering.drain._stopping import finish_or_cancel, raise_if_cancelling
from ccat_buffering.errors import BackendError

__all__ = ["LeaseHolding"]


class LeaseHolding:
    """Whether this processor holds its site's lease, and the work of keeping it.

    Args:
        lease: The site's lease store.
        holder: This processor's token.
        ttl: Seconds the lease lasts unless renewed.
        clock: Monotonic seconds.
    """

    def __init__(
        self, lease: ProcessorLease, holder: str, ttl: float, clock: Callable[[], float]
    ) -> None:
        self.lease = lease
        self.holder = holder
        self.ttl = ttl
        self.clock = clock
        self.held = False
        self._renewed_at = float("-inf")

    async def take(self) -> bool:
        """Try to acquire the lease anew.

        Returns:
            Whether this processor holds it now.
        """
        if not await self.lease.acquire(self.holder, self.ttl):
            return False
        self.held, self._renewed_at = True, self.clock()
        return True

    async def still_held(self) -> bool:
        """Renew the lease held since before, when a renewal is due; never take it anew.

        Returns:
            Whether this processor still holds it.
        """
        if self.clock() - self._renewed_at < self.ttl / 3:
            return True
        if await self.lease.renew(self.holder, self.ttl):
            self._renewed_at = self.clock()
            return True
        return False

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[None]:
        """Renew the lease in the background while the body waits, however long it waits.

        On the way out the renewal is stopped within a bounded time, even
        when a Redis call lost the cancellation (see the module's docstring).
        """
        task = asyncio.create_task(self._renew_while_waiting())
        try:
            yield
        finally:
            # Cancelled again and again until it ends: one cancellation may be lost.
            with contextlib.suppress(BackendError):
                await finish_or_cancel(task)

    async def _renew_while_waiting(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            if await self.lease.renew(self.holder, self.ttl):
                self._renewed_at = self.clock()
            else:
                self._renewed_at = float("-inf")  # the check after the call sees it
                return
            # The body ended during the renewal, and the call may have eaten the
            # cancellation: stop here, not at the next sleep (never, then).
            raise_if_cancelling()

    async def release(self) -> None:
        """Give the lease up, if held."""
        if self.held:
            self.held = False
            await self.lease.release(self.holder)
