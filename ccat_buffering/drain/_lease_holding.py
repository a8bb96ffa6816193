"""A processor's hold on its site's lease: taken, renewed, and kept while a call waits.

One processor drains a site at a time, so order holds. The lease lasts
``ttl`` seconds unless renewed; the holder renews it once a third of that has
passed, between batches, and beside any call that waits on the main database
(a hung link must not cost the lease: the next holder would recover claims
this one still works on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from ccat_buffering.buffer.protocols import ProcessorLease
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
        """Renew the lease in the background while the body waits, however long it waits."""
        task = asyncio.create_task(self._renew_while_waiting())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, BackendError):
                await task

    async def _renew_while_waiting(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            if await self.lease.renew(self.holder, self.ttl):
                self._renewed_at = self.clock()
            else:
                self._renewed_at = float("-inf")  # the check after the call sees it
                return

    async def release(self) -> None:
        """Give the lease up, if held."""
        if self.held:
            self.held = False
            await self.lease.release(self.holder)
