"""The curated public names: adding or removing one is a decision, not an accident."""

from __future__ import annotations

import importlib

import pytest

import ccat_buffering
import ccat_buffering_memory

EXPECTED = [
    "BackendError",
    "BackendFullError",
    "BackendUnavailableError",
    "BackgroundProcessor",
    "BatchResult",
    "BufferHealth",
    "BufferLostError",
    "BufferingCoordinator",
    "BufferingError",
    "BufferingSettings",
    "ConfigurationError",
    "ConflictError",
    "ConflictKind",
    "ConflictPolicies",
    "ConflictPolicy",
    "CorruptEntryError",
    "DatabaseUnavailableError",
    "Delivery",
    "ExecutionError",
    "FORMAT_VERSION",
    "FailureKind",
    "Health",
    "IdempotencyKeyReusedError",
    "ImmediateReplicationChecker",
    "LSN",
    "LSNReplicationChecker",
    "LeaseLostError",
    "LedgerHorizonError",
    "ModelRegistry",
    "Operation",
    "Outcome",
    "PayloadTooLargeError",
    "ProcessorHealth",
    "ProcessorState",
    "Reads",
    "RecordHandle",
    "RecordNotFoundError",
    "Ref",
    "ReplicaState",
    "ReplicationChecker",
    "ReplicationError",
    "ReplicationHealth",
    "ReplicationTracker",
    "RetryPolicy",
    "Step",
    "Transaction",
    "TransactionBuilder",
    "TransactionExecutor",
    "TransactionFailedError",
    "TransactionManager",
    "TransactionState",
    "TransactionStatus",
    "TransactionValidationError",
    "UnknownColumnError",
    "UnknownModelError",
    "UnknownTransactionError",
    "UnresolvedReferenceError",
    "WaitError",
    "WaitTimeoutError",
    "WriteNotReplicatedError",
    "classify_failure",
    "create_engine",
    "mask_url",
    "open_backend",
]


def test_all_is_pinned() -> None:
    assert ccat_buffering.__all__ == EXPECTED
    assert ccat_buffering_memory.__all__ == ["MemoryBackend"]


def test_testing_all_is_pinned() -> None:
    import ccat_buffering.testing

    assert ccat_buffering.testing.__all__ == [
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


def test_checks_all_is_pinned() -> None:
    """The checks a third-party backend runs: one per store method, and their parts."""
    import ccat_buffering.checks

    assert ccat_buffering.checks.__all__ == [
        "check_audit",
        "check_cache_extend",
        "check_cache_release",
        "check_cache_write",
        "check_claim",
        "check_dead_letter",
        "check_duration",
        "check_lease",
        "check_lease_holder",
        "check_letter_ids",
        "check_payload",
        "check_push",
        "check_receipts",
        "check_record_id",
        "check_report",
        "check_retry",
        "check_status",
        "check_status_put",
        "check_transaction_id",
        "check_writes",
    ]


def test_every_name_exists() -> None:
    for name in ccat_buffering.__all__:
        assert getattr(ccat_buffering, name) is not None


MOVED = [
    ("ccat_buffering.example", "Base", "ccat_buffering.demo.example"),
    ("ccat_buffering.simulation", "simulate", "ccat_buffering.demo.simulation"),
    ("ccat_buffering.executor", "create_engine", "ccat_buffering.database"),
    ("ccat_buffering.executor", "ledger_metadata", "ccat_buffering.database"),
    ("ccat_buffering.settings", "mask_text", "ccat_buffering.masking"),
    ("ccat_buffering.manager", "cache_writes", "ccat_buffering.cache_writes"),
    ("ccat_buffering.manager", "key_text", "ccat_buffering.cache_writes"),
    ("ccat_buffering.manager", "record_id", "ccat_buffering.cache_writes"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_a_moved_name_keeps_its_old_path_for_one_release(old: str, name: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} moved to {new}.{name}"):
        found = getattr(importlib.import_module(old), name)
    assert found is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError):
        _ = importlib.import_module(old).no_such_name


def test_the_package_imports_no_deprecated_path() -> None:
    import subprocess
    import sys

    code = "import ccat_buffering, ccat_buffering.cli, ccat_buffering.demo.simulation"
    out = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_core_imports_no_backend_client() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ccat_buffering; "
        "clients = ('redis', 'asyncpg', 'aiosqlite', 'ccat_buffering_redis'); "
        "bad = [m for m in clients if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_report_counts_the_buffer_under_the_stores_names() -> None:
    import dataclasses

    from ccat_buffering.counts import BufferCounts
    from ccat_buffering.health import BufferHealth
    from ccat_buffering.processor import ProcessorHealth
    from ccat_buffering.protocols import BufferStats

    counts = list(BufferCounts.model_fields)
    store = [f.name for f in dataclasses.fields(BufferStats)]
    assert counts == store[: len(counts)], (counts, store)
    for report in (BufferHealth, ProcessorHealth):
        assert issubclass(report, BufferCounts)
    stats = BufferStats(depth=3, in_flight=2, dead_letters=1, held_until=None)
    assert BufferCounts.of(stats) == {"depth": 3, "in_flight": 2, "dead_letters": 1}
