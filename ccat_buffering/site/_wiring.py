"""The parts of a site as its settings ask for them.

Re-exported by :mod:`ccat_buffering.site.coordinator`, where they were first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.protocols import Backend
from ccat_buffering.buffer.retry import RetryPolicy
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.confirm.replication import ReplicationChecker, ReplicationTracker
from ccat_buffering.conflicts.kinds import ConflictPolicies
from ccat_buffering.drain._link import LinkTimeouts
from ccat_buffering.drain._sizing import BatchSizer
from ccat_buffering.write.registry import ModelRegistry

__all__ = [
    "apply_conflict_settings",
    "batch_sizer",
    "link_timeouts",
    "replication_tracker",
    "transaction_manager",
]


def transaction_manager(
    settings: BufferingSettings, backend: Backend, registry: ModelRegistry | None = None
) -> TransactionManager:
    """The transaction manager the settings ask for (retries, TTLs, size limit).

    Args:
        settings: The site's settings.
        backend: The site's stores.
        registry: The mapped classes, to check and convert transactions.

    Returns:
        The manager.
    """
    return TransactionManager(
        backend,
        registry=registry,
        retry_policy=RetryPolicy(
            max_attempts=settings.max_attempts,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
        ),
        status_ttl=settings.status_ttl,
        cache_ttl=settings.cache_ttl,
        max_payload_bytes=settings.max_payload_bytes,
    )


def replication_tracker(
    settings: BufferingSettings,
    manager: TransactionManager,
    checker: ReplicationChecker,
    leading: Callable[[], Awaitable[bool]] | None = None,
) -> ReplicationTracker:
    """The replication tracker the settings ask for (poll interval, timeout).

    Args:
        settings: The site's settings.
        manager: The site's transaction manager.
        checker: Answers how far the replica has replayed.
        leading: Whether this process confirms replication now (see
            :class:`~ccat_buffering.confirm.replication.ReplicationTracker`).

    Returns:
        The tracker.
    """
    return ReplicationTracker(
        manager,
        checker,
        poll_interval=settings.replication_poll_interval,
        timeout=settings.replication_timeout,
        leading=leading,
    )


def link_timeouts(settings: BufferingSettings) -> LinkTimeouts:
    """The link timeouts the settings ask for.

    Args:
        settings: The site's settings.

    Returns:
        Connect, statement, lock, idle-in-transaction and keepalive limits.
    """
    return LinkTimeouts(
        connect=settings.connect_timeout,
        statement=settings.statement_timeout,
        lock=settings.lock_timeout,
        idle_in_transaction=settings.idle_in_transaction_timeout,
        keepalive_idle=settings.tcp_keepalive_idle,
        keepalive_interval=settings.tcp_keepalive_interval,
        keepalive_count=settings.tcp_keepalive_count,
    )


def batch_sizer(settings: BufferingSettings) -> BatchSizer | None:
    """The adaptive batch sizing the settings ask for, or ``None`` for fixed batches.

    Args:
        settings: The site's settings.

    Returns:
        A sizer between the configured bounds, starting at ``batch_size``.
    """
    if not settings.batch_size_adaptive:
        return None
    return BatchSizer(
        start=settings.batch_size,
        minimum=min(settings.batch_size_min, settings.batch_size),
        maximum=max(settings.batch_size_max, settings.batch_size),
        max_bytes=settings.batch_max_bytes,
        max_seconds=settings.statement_timeout / 3,
    )


def largest_batch(settings: BufferingSettings) -> int:
    """The largest batch the settings let the worker claim (see :func:`batch_sizer`)."""
    if not settings.batch_size_adaptive:
        return settings.batch_size
    return max(settings.batch_size_max, settings.batch_size)


def apply_conflict_settings(settings: BufferingSettings, registry: ModelRegistry) -> None:
    """Add the settings' conflict policies to the registry's, where code set none.

    Raises:
        ConfigurationError: An unknown policy, or ``newer_wins`` without a
            write-time column.
    """
    parsed = ConflictPolicies.parse(settings.conflict_policies, settings.conflict_write_time)
    policies = registry.conflict_policies
    for model, column in parsed.write_time.items():
        policies.write_time.setdefault(model, column)
    for model, policy in parsed.models.items():
        policies.models.setdefault(model, policy)
    for column, policy in parsed.columns.items():
        policies.columns.setdefault(column, policy)
    if "*" in settings.conflict_policies and policies.default is ConflictPolicies().default:
        policies.default = parsed.default
