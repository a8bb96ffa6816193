"""The curated public names: adding or removing one is a decision, not an accident."""

from __future__ import annotations

import ccat_buffering
import ccat_buffering_memory

EXPECTED = [
    "FORMAT_VERSION",
    "LSN",
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
    "CorruptEntryError",
    "DatabaseUnavailableError",
    "Delivery",
    "ExecutionError",
    "FailureKind",
    "Health",
    "ImmediateReplicationChecker",
    "LSNReplicationChecker",
    "LeaseLostError",
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
    "TransactionManager",
    "TransactionState",
    "TransactionStatus",
    "TransactionValidationError",
    "UnknownColumnError",
    "UnknownModelError",
    "UnresolvedReferenceError",
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
        "AtomicContract",
        "BackendContract",
        "BufferStoreContract",
        "CacheStoreContract",
        "ContractHooks",
        "DeadLetterStoreContract",
        "ProcessorLeaseContract",
        "StatusStoreContract",
        "new_site_name",
    ]


def test_every_name_exists() -> None:
    for name in ccat_buffering.__all__:
        assert getattr(ccat_buffering, name) is not None


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


def test_the_engine_and_ledger_names_of_the_executor_module_still_work_and_warn() -> None:
    import pytest

    import ccat_buffering.database
    import ccat_buffering.executor

    for name in ("LEDGER_TABLE_NAME", "create_engine", "ledger_metadata", "ledger_table"):
        with pytest.warns(DeprecationWarning, match=f"ccat_buffering.database.{name}"):
            old = getattr(ccat_buffering.executor, name)
        assert old is getattr(ccat_buffering.database, name)


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
