"""The memory backend against the shared backend contract, on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from ccat_buffering.testing import BackendContract
from ccat_buffering_memory import MemoryBackend

from support import FakeClock


class TestMemoryBackend(BackendContract):
    """The memory backend passes every contract, exactly, on a fake clock."""

    clock_is_exact = True
    supports_processor_reports = True
    supports_inspection = True
    supports_audit_log = True
    supports_status_paging = True
    supports_letter_paging = True
    supports_chart_samples = True

    @pytest_asyncio.fixture
    async def backend(self, site: str) -> AsyncIterator[MemoryBackend]:
        """A fresh memory backend on a fake clock."""
        self.clock = FakeClock()
        async with MemoryBackend(site, clock=self.clock) as backend:
            yield backend

    async def advance(self, seconds: float) -> None:
        """Move the fake clock."""
        self.clock.advance(seconds)

    def now(self) -> float:
        """Read the fake clock."""
        return self.clock()
