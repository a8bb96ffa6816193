"""The contract of :class:`~ccat_buffering.buffer.protocols.ProcessorLease`."""

from __future__ import annotations

from ccat_buffering.buffer.protocols import Backend
from ccat_buffering.testing._base import ContractHooks

__all__ = ["ProcessorLeaseContract"]


class ProcessorLeaseContract(ContractHooks):
    """The processor lease: acquire, renew, release and current."""

    async def lease_lapses(self, backend: Backend, what: str) -> None:
        """Wait, with a deadline, until no lease is live."""

        async def free() -> bool:
            return await backend.lease.current() is None

        await self.eventually(free, what)

    async def assert_held(self, backend: Backend, holder: str, expires_at: float) -> None:
        """Check that ``holder`` holds the lease until ``expires_at``."""
        lease = await backend.lease.current()
        assert lease is not None, f"expected {holder} to hold the lease, but it is free"
        assert lease.holder == holder
        self.assert_time(lease.expires_at, expires_at, "lease expires_at")

    async def test_lease_current_none_when_free(self, backend: Backend) -> None:
        """A new site's lease is free."""
        assert await backend.lease.current() is None

    async def test_lease_acquire_free(self, backend: Backend) -> None:
        """A free lease is taken, until ``ttl_seconds`` from now."""
        assert await backend.lease.acquire("p1", 30.0) is True
        await self.assert_held(backend, "p1", self.now() + 30.0)

    async def test_lease_acquire_held_by_another(self, backend: Backend) -> None:
        """A live lease held by another cannot be taken."""
        await backend.lease.acquire("p1", 30.0)
        assert await backend.lease.acquire("p2", 60.0) is False
        await self.assert_held(backend, "p1", self.now() + 30.0)

    async def test_lease_acquire_by_holder_renews(self, backend: Backend) -> None:
        """The holder acquiring again renews its lease."""
        await backend.lease.acquire("p1", 2 * self.tick)
        await self.advance(self.tick)
        assert await backend.lease.acquire("p1", 2 * self.tick) is True
        await self.assert_held(backend, "p1", self.now() + 2 * self.tick)
        await self.advance(1.5 * self.tick)
        assert await backend.lease.current() is not None

    async def test_lease_acquire_after_expiry(self, backend: Backend) -> None:
        """An expired lease is free for another."""
        await backend.lease.acquire("p1", self.tick)
        await self.advance(self.tick)
        await self.lease_lapses(backend, "a 1-tick lease lapses after 1 tick")
        assert await backend.lease.acquire("p2", 30.0) is True
        await self.assert_held(backend, "p2", self.now() + 30.0)

    async def test_lease_current_none_after_expiry(self, backend: Backend) -> None:
        """An expired lease is not current."""
        await backend.lease.acquire("p1", 2 * self.tick)
        await self.advance(self.tick)
        assert await backend.lease.current() is not None
        await self.advance(self.tick)
        await self.lease_lapses(backend, "a 2-tick lease lapses after 2 ticks")

    async def test_lease_renew_by_holder(self, backend: Backend) -> None:
        """The holder's renewal pushes the expiry to ``ttl_seconds`` from now."""
        await backend.lease.acquire("p1", 2 * self.tick)
        await self.advance(self.tick)
        assert await backend.lease.renew("p1", 2 * self.tick) is True
        await self.assert_held(backend, "p1", self.now() + 2 * self.tick)
        await self.advance(1.5 * self.tick)
        assert await backend.lease.current() is not None

    async def test_lease_renew_by_another(self, backend: Backend) -> None:
        """Another cannot renew the holder's lease, nor take it that way."""
        await backend.lease.acquire("p1", 30.0)
        assert await backend.lease.renew("p2", 60.0) is False
        await self.assert_held(backend, "p1", self.now() + 30.0)

    async def test_lease_renew_when_free_or_expired(self, backend: Backend) -> None:
        """A lease that is free or lapsed cannot be renewed."""
        assert await backend.lease.renew("p1", 30.0) is False
        assert await backend.lease.current() is None
        await backend.lease.acquire("p1", self.tick)
        await self.advance(self.tick)
        await self.lease_lapses(backend, "a 1-tick lease lapses after 1 tick")
        assert await backend.lease.renew("p1", 30.0) is False
        assert await backend.lease.current() is None

    async def test_lease_release_by_holder(self, backend: Backend) -> None:
        """The holder releases its lease, which another may take at once."""
        await backend.lease.acquire("p1", 30.0)
        assert await backend.lease.release("p1") is True
        assert await backend.lease.current() is None
        assert await backend.lease.acquire("p2", 30.0) is True

    async def test_lease_release_by_another(self, backend: Backend) -> None:
        """Another cannot release the holder's lease."""
        await backend.lease.acquire("p1", 30.0)
        assert await backend.lease.release("p2") is False
        await self.assert_held(backend, "p1", self.now() + 30.0)

    async def test_lease_release_when_free(self, backend: Backend) -> None:
        """Releasing a free lease releases nothing."""
        assert await backend.lease.release("p1") is False
        await backend.lease.acquire("p1", 30.0)
        await backend.lease.release("p1")
        assert await backend.lease.release("p1") is False
