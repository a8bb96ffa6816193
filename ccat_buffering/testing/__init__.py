"""Contract suites that every backend must pass, shipped so that any backend can run them.

A backend's test module subclasses :class:`BackendContract` (or the mixin of
one store) and overrides the ``backend`` fixture; a backend on an injected
clock also overrides :meth:`ContractHooks.advance` and
:meth:`ContractHooks.now` and sets ``clock_is_exact = True``; a backend with
optional capabilities sets their flags (:class:`CapabilityFlags`)::

    import pytest_asyncio
    from ccat_buffering.testing import BackendContract

    class TestMyBackend(BackendContract):
        @pytest_asyncio.fixture
        async def backend(self, site):
            async with MyBackend(site=site) as backend:
                yield backend

The suites need ``pytest`` and ``pytest-asyncio``; importing this package
imports both.
"""

from ccat_buffering.testing._arguments import ArgumentContract
from ccat_buffering.testing._atomic import AtomicContract
from ccat_buffering.testing._backend import BackendContract
from ccat_buffering.testing._base import ContractHooks, new_site_name
from ccat_buffering.testing._buffer import BufferStoreContract
from ccat_buffering.testing._cache import CacheStoreContract
from ccat_buffering.testing._capabilities import (
    AuditLogContract,
    BufferHealthContract,
    BufferMarkerContract,
    CapabilityFlags,
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

__all__ = [
    "ArgumentContract",
    "AtomicContract",
    "AuditLogContract",
    "BackendContract",
    "BufferHealthContract",
    "BufferMarkerContract",
    "BufferStoreContract",
    "CacheStoreContract",
    "CapabilityFlags",
    "ChartSamplesContract",
    "ContractHooks",
    "DeadLetterStoreContract",
    "InspectionContract",
    "KeyAuditContract",
    "LetterPagingContract",
    "ProcessorLeaseContract",
    "ProcessorReportsContract",
    "StatusPagingContract",
    "StatusStoreContract",
    "new_site_name",
]
