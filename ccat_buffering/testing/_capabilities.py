"""The contracts of the optional capabilities (the ``Supports*`` protocols).

A backend's test class sets the flag of each capability it has; the tests of
a capability it lacks skip. One test checks that each flag tells the truth,
so a backend cannot gain or lose a capability without its tests noticing.
"""

from __future__ import annotations

from typing import ClassVar

import pytest

from ccat_buffering.buffer.protocols import (
    Backend,
    CacheKind,
    CacheWrite,
    KeyInfo,
    MemoryReport,
    SupportsAuditLog,
    SupportsBufferHealth,
    SupportsBufferMarker,
    SupportsChartSamples,
    SupportsInspection,
    SupportsKeyAudit,
    SupportsLetterPaging,
    SupportsProcessorReports,
    SupportsStatusPaging,
)
from ccat_buffering.testing._base import LONG_LEASE, ContractHooks

__all__ = [
    "AuditLogContract",
    "BufferHealthContract",
    "BufferMarkerContract",
    "CapabilityFlags",
    "InspectionContract",
    "KeyAuditContract",
    "ProcessorReportsContract",
]


class CapabilityFlags(ContractHooks):
    """Which capabilities the backend has; its test class sets the flags that hold.

    Attributes:
        supports_processor_reports: ``backend.lease`` is a
            :class:`~ccat_buffering.buffer.protocols.SupportsProcessorReports`.
        supports_inspection: The backend is a
            :class:`~ccat_buffering.buffer.protocols.SupportsInspection`.
        supports_key_audit: The backend is a
            :class:`~ccat_buffering.buffer.protocols.SupportsKeyAudit`.
        supports_buffer_health: The backend is a
            :class:`~ccat_buffering.buffer.protocols.SupportsBufferHealth`.
        supports_buffer_marker: The backend is a
            :class:`~ccat_buffering.buffer.protocols.SupportsBufferMarker`.
        supports_audit_log: The backend is a
            :class:`~ccat_buffering.buffer.protocols.SupportsAuditLog`.
        supports_status_paging: ``backend.status`` is a
            :class:`~ccat_buffering.buffer.protocols.SupportsStatusPaging`.
        supports_letter_paging: ``backend.dead_letters`` is a
            :class:`~ccat_buffering.buffer.protocols.SupportsLetterPaging`.
        supports_chart_samples: The backend is a
            :class:`~ccat_buffering.buffer.protocols.SupportsChartSamples`.
    """

    supports_processor_reports: ClassVar[bool] = False
    supports_inspection: ClassVar[bool] = False
    supports_key_audit: ClassVar[bool] = False
    supports_buffer_health: ClassVar[bool] = False
    supports_buffer_marker: ClassVar[bool] = False
    supports_audit_log: ClassVar[bool] = False
    supports_status_paging: ClassVar[bool] = False
    supports_letter_paging: ClassVar[bool] = False
    supports_chart_samples: ClassVar[bool] = False

    def require(self, flag: str) -> None:
        """Skip the test unless the backend's test class sets ``flag``."""
        if not getattr(self, flag):
            pytest.skip(f"{type(self).__name__} does not set {flag}")

    async def test_capability_flags_tell_the_truth(self, backend: Backend) -> None:
        """Each flag is set exactly where the backend has the capability."""
        has = {
            "supports_processor_reports": isinstance(backend.lease, SupportsProcessorReports),
            "supports_inspection": isinstance(backend, SupportsInspection),
            "supports_key_audit": isinstance(backend, SupportsKeyAudit),
            "supports_buffer_health": isinstance(backend, SupportsBufferHealth),
            "supports_buffer_marker": isinstance(backend, SupportsBufferMarker),
            "supports_audit_log": isinstance(backend, SupportsAuditLog),
            "supports_status_paging": isinstance(backend.status, SupportsStatusPaging),
            "supports_letter_paging": isinstance(backend.dead_letters, SupportsLetterPaging),
            "supports_chart_samples": isinstance(backend, SupportsChartSamples),
        }
        assert {flag: getattr(self, flag) for flag in has} == has


class ProcessorReportsContract(CapabilityFlags):
    """:class:`~ccat_buffering.buffer.protocols.SupportsProcessorReports`, on ``backend.lease``."""

    def reports(self, backend: Backend) -> SupportsProcessorReports:
        """The lease store as the capability, or skip."""
        self.require("supports_processor_reports")
        lease = backend.lease
        assert isinstance(lease, SupportsProcessorReports)
        return lease

    async def test_reports_none_at_first(self, backend: Backend) -> None:
        """A fresh site has no report."""
        assert await self.reports(backend).processor_report() is None

    async def test_reports_latest_replaces(self, backend: Backend) -> None:
        """A report replaces the previous one and reads back as it was published."""
        reports = self.reports(backend)
        await reports.publish_report('{"state": "draining"}', 60.0)
        await reports.publish_report('{"state": "idle", "text": "é"}', 60.0)
        assert await reports.processor_report() == '{"state": "idle", "text": "é"}'

    async def test_reports_expire(self, backend: Backend) -> None:
        """A report is gone once its TTL has passed."""
        reports = self.reports(backend)
        await reports.publish_report("{}", self.tick)
        await self.advance(1.2 * self.tick)

        async def gone() -> bool:
            return await reports.processor_report() is None

        await self.eventually(gone, "the report expired")


class InspectionContract(CapabilityFlags):
    """:class:`~ccat_buffering.buffer.protocols.SupportsInspection`."""

    def inspection(self, backend: Backend) -> SupportsInspection:
        """The backend as the capability, or skip."""
        self.require("supports_inspection")
        assert isinstance(backend, SupportsInspection)
        return backend

    async def test_inspection_finds_the_payload_wherever_it_waits(self, backend: Backend) -> None:
        """Waiting, in flight or dead-lettered, the payload is found; an unknown id is not."""
        inspection = self.inspection(backend)
        payloads = {t: f'{{"transaction_id":"{t}","steps":[]}}' for t in ("t-a", "t-b", "t-c")}
        await backend.buffer.push(list(payloads.values()))
        first, _ = await backend.buffer.claim(2, LONG_LEASE)
        assert await backend.buffer.dead_letter(first.receipt, "boom", "t-a")
        for transaction_id, payload in payloads.items():
            assert await inspection.find_payload(transaction_id) == payload, transaction_id
        assert await inspection.find_payload("t-unknown") is None

    async def test_inspection_lists_the_keys_of_a_transaction(self, backend: Backend) -> None:
        """The status and each record the transaction wrote are listed, with their TTLs."""
        inspection = self.inspection(backend)
        status = self.make_status()
        tid = status.transaction_id
        await backend.status.put(status, 60.0)
        await backend.cache.write(tid, [CacheWrite("Observation", "r1", CacheKind.CREATE, {})], 60)
        keys = await inspection.transaction_keys(tid, [("Observation", "r1")])
        assert all(isinstance(k, KeyInfo) for k in keys)
        assert len(keys) >= 2, keys
        assert any(k.ttl_seconds is None for k in keys), "a buffered status never expires"
        assert any(k.ttl_seconds is not None and 0 < k.ttl_seconds <= 60 for k in keys)
        assert await inspection.transaction_keys("t-unknown", [("Observation", "r1")]) == []


class KeyAuditContract(CapabilityFlags):
    """:class:`~ccat_buffering.buffer.protocols.SupportsKeyAudit`."""

    def audit(self, backend: Backend) -> SupportsKeyAudit:
        """The backend as the capability, or skip."""
        self.require("supports_key_audit")
        assert isinstance(backend, SupportsKeyAudit)
        return backend

    async def test_key_audit_finds_no_leak_in_ordinary_use(self, backend: Backend) -> None:
        """Entries, unfinished statuses, cache records and the lease are no leaks."""
        audit = self.audit(backend)
        await backend.buffer.push(["a", "b"])
        await backend.buffer.claim(1, LONG_LEASE)
        status = self.make_status()
        await backend.status.put(status, 60.0)
        await backend.cache.write(
            status.transaction_id, [CacheWrite("Observation", "r1", CacheKind.CREATE, {})], 60
        )
        await backend.lease.acquire("holder", LONG_LEASE)
        assert await audit.audit_keys() == []

    async def test_key_audit_persistence_warning_is_text_or_none(self, backend: Backend) -> None:
        """The persistence warning is a sentence or nothing."""
        warning = await self.audit(backend).persistence_warning()
        assert warning is None or (isinstance(warning, str) and warning)


class BufferHealthContract(CapabilityFlags):
    """:class:`~ccat_buffering.buffer.protocols.SupportsBufferHealth`."""

    def health(self, backend: Backend) -> SupportsBufferHealth:
        """The backend as the capability, or skip."""
        self.require("supports_buffer_health")
        assert isinstance(backend, SupportsBufferHealth)
        return backend

    async def test_buffer_health_reports_memory(self, backend: Backend) -> None:
        """The memory report, where there is one, holds sizes that make sense."""
        await backend.buffer.push(["a"])
        report = await self.health(backend).memory_report()
        if report is None:
            return  # the store would not say (Redis without INFO)
        assert isinstance(report, MemoryReport)
        assert report.used_bytes >= 0
        assert report.limit_bytes is None or report.limit_bytes > 0

    async def test_buffer_health_warnings_are_sentences(self, backend: Backend) -> None:
        """Each warning is non-empty text."""
        warnings = await self.health(backend).buffer_warnings()
        assert isinstance(warnings, list)
        assert all(isinstance(w, str) and w for w in warnings)


class BufferMarkerContract(CapabilityFlags):
    """:class:`~ccat_buffering.buffer.protocols.SupportsBufferMarker`."""

    def marker(self, backend: Backend) -> SupportsBufferMarker:
        """The backend as the capability, or skip."""
        self.require("supports_buffer_marker")
        assert isinstance(backend, SupportsBufferMarker)
        return backend

    async def test_buffer_marker_stamps_once_unless_replaced(self, backend: Backend) -> None:
        """A fresh store has no marker; a stamp sets it once, ``replace`` overwrites it."""
        marker = self.marker(backend)
        epoch, _ = await marker.buffer_mark()
        assert epoch is None
        assert await marker.stamp_buffer("epoch-1")
        assert not await marker.stamp_buffer("epoch-2")
        assert (await marker.buffer_mark())[0] == "epoch-1"
        assert await marker.stamp_buffer("epoch-3", replace=True)
        assert (await marker.buffer_mark())[0] == "epoch-3"

    async def test_buffer_marker_counter_only_grows(self, backend: Backend) -> None:
        """The sequence counter does not fall while the store keeps its state."""
        marker = self.marker(backend)
        seen = [(await marker.buffer_mark())[1]]
        for payload in ("a", "b"):
            await backend.buffer.push([payload])
            seen.append((await marker.buffer_mark())[1])
        assert seen == sorted(seen)


class AuditLogContract(CapabilityFlags):
    """:class:`~ccat_buffering.buffer.protocols.SupportsAuditLog`."""

    def audit_log(self, backend: Backend) -> SupportsAuditLog:
        """The backend as the capability, or skip."""
        self.require("supports_audit_log")
        assert isinstance(backend, SupportsAuditLog)
        return backend

    async def test_audit_log_is_empty_at_first(self, backend: Backend) -> None:
        """A fresh site has no audit entries."""
        assert await self.audit_log(backend).audit_entries() == []

    async def test_audit_log_reads_newest_first_and_keeps_the_newest(
        self, backend: Backend
    ) -> None:
        """Entries read back newest first, as written; beyond ``keep`` the oldest go."""
        log = self.audit_log(backend)
        for n in range(5):
            await log.append_audit(f'{{"n": {n}, "text": "é"}}', 3)
        assert await log.audit_entries() == [f'{{"n": {n}, "text": "é"}}' for n in (4, 3, 2)]
        assert await log.audit_entries(2) == ['{"n": 4, "text": "é"}', '{"n": 3, "text": "é"}']
        assert await log.audit_entries(0) == []

    async def test_audit_log_refuses_bad_arguments_and_writes_nothing(
        self, backend: Backend
    ) -> None:
        """Not text, or a cap below one: refused before anything is written."""
        log = self.audit_log(backend)
        with pytest.raises(TypeError):
            await log.append_audit(b"{}", 10)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await log.append_audit("{}", 0)
        assert await log.audit_entries() == []
