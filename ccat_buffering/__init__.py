"""ccat-buffering: keep writing at a remote site when the main database is far away.

Writes become buffered transactions: stored atomically in a local buffer,
tracked by a status, mirrored into caches so the site reads its own writes,
drained in order into the main database, and released from the caches only
when the site's replica has replayed the commit.
"""

from ccat_buffering.buffer.manager import Delivery, TransactionManager
from ccat_buffering.buffer.retry import FailureKind, RetryPolicy, classify_failure
from ccat_buffering.config.backends import open_backend
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.confirm.replication import (
    ImmediateReplicationChecker,
    LSNReplicationChecker,
    ReplicaState,
    ReplicationChecker,
    ReplicationTracker,
)
from ccat_buffering.conflicts import ConflictKind, ConflictPolicies, ConflictPolicy
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import BatchResult, Outcome, TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor, ProcessorHealth, ProcessorState
from ccat_buffering.errors import (
    BackendError,
    BackendFullError,
    BackendUnavailableError,
    BufferingError,
    BufferLostError,
    ConfigurationError,
    ConflictError,
    CorruptEntryError,
    DatabaseUnavailableError,
    ExecutionError,
    IdempotencyKeyReusedError,
    LeaseLostError,
    LedgerHorizonError,
    PayloadTooLargeError,
    RecordNotFoundError,
    ReplicationError,
    TransactionFailedError,
    TransactionValidationError,
    UnknownColumnError,
    UnknownModelError,
    UnknownTransactionError,
    UnresolvedReferenceError,
    WaitError,
    WaitTimeoutError,
    WriteNotReplicatedError,
)
from ccat_buffering.masking import mask_url
from ccat_buffering.observe.health import BufferHealth, Health, ReplicationHealth
from ccat_buffering.read.reads import Reads
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.handles import RecordHandle
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import (
    FORMAT_VERSION,
    Operation,
    Ref,
    Step,
    Transaction,
    TransactionState,
    TransactionStatus,
)
from ccat_buffering.write.registry import ModelRegistry

__all__ = [
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
