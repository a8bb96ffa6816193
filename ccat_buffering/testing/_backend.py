"""The whole contract of a :class:`~ccat_buffering.protocols.Backend`."""

from __future__ import annotations

from ccat_buffering.models import TransactionState
from ccat_buffering.protocols import (
    Backend,
    BufferStore,
    CacheStore,
    DeadLetterStore,
    ProcessorLease,
    StatusStore,
)
from ccat_buffering.testing._arguments import ArgumentContract
from ccat_buffering.testing._atomic import AtomicContract
from ccat_buffering.testing._buffer import BufferStoreContract
from ccat_buffering.testing._cache import CacheStoreContract
from ccat_buffering.testing._capabilities import (
    AuditLogContract,
    BufferHealthContract,
    BufferMarkerContract,
    InspectionContract,
    KeyAuditContract,
    ProcessorReportsContract,
)
from ccat_buffering.testing._dead_letters import DeadLetterStoreContract
from ccat_buffering.testing._lease import ProcessorLeaseContract
from ccat_buffering.testing._paging import (
    ChartSamplesContract,
    LetterPagingContract,
    StatusPagingContract,
)
from ccat_buffering.testing._status import StatusStoreContract

__all__ = ["BackendContract"]


class BackendContract(
    BufferStoreContract,
    DeadLetterStoreContract,
    StatusStoreContract,
    CacheStoreContract,
    ProcessorLeaseContract,
    AtomicContract,
    ArgumentContract,
    ProcessorReportsContract,
    InspectionContract,
    KeyAuditContract,
    BufferHealthContract,
    BufferMarkerContract,
    AuditLogContract,
    StatusPagingContract,
    LetterPagingContract,
    ChartSamplesContract,
):
    """Every store's contract, atomic groups, bad arguments, capabilities, and the backend's own.

    A backend's test class subclasses this, overrides the ``backend`` fixture
    (see :class:`~ccat_buffering.testing.ContractHooks`) and sets the flag of
    each capability it has (see :class:`~ccat_buffering.testing.CapabilityFlags`)::

        class TestMyBackend(BackendContract):
            supports_inspection = True

            @pytest_asyncio.fixture
            async def backend(self, site):
                async with MyBackend(site=site) as backend:
                    yield backend
    """

    async def test_backend_serves_its_site(self, backend: Backend, site: str) -> None:
        """The backend names the site it was opened for."""
        assert backend.site == site

    async def test_backend_satisfies_the_protocols(self, backend: Backend) -> None:
        """The backend and each of its stores have every method of their protocol."""
        assert isinstance(backend, Backend)
        assert isinstance(backend.buffer, BufferStore)
        assert isinstance(backend.dead_letters, DeadLetterStore)
        assert isinstance(backend.status, StatusStore)
        assert isinstance(backend.cache, CacheStore)
        assert isinstance(backend.lease, ProcessorLease)

    async def test_backend_new_site_is_empty(self, backend: Backend) -> None:
        """A fresh site holds nothing."""
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.dead_letters) == (0, 0, 0)
        assert await backend.dead_letters.list() == []
        assert await backend.status.counts() == dict.fromkeys(TransactionState, 0)
        assert await backend.lease.current() is None

    async def test_backend_is_an_async_context_manager(self, backend: Backend) -> None:
        """Entering the backend returns it; exiting closes it without error."""
        async with backend as entered:
            assert entered is backend
