"""The one place that knows every part, and wires a site from its settings.

Services receive a :class:`BufferingCoordinator` (by dependency injection)
and call :meth:`~BufferingCoordinator.submit`, :meth:`~BufferingCoordinator.status`
and :attr:`~BufferingCoordinator.reads`; whether the site buffers or writes
directly is a setting, not a change of service code.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering import logs
from ccat_buffering.buffer.protocols import AuditProgress, Backend
from ccat_buffering.config.backends import open_backend
from ccat_buffering.config.settings import BufferingSettings, load_settings
from ccat_buffering.confirm.replication import (
    ImmediateReplicationChecker,
    LSNReplicationChecker,
    ReplicationChecker,
)
from ccat_buffering.confirm.waiting import StatusWatch, Until
from ccat_buffering.conflicts.resolve import Keep, Resolution, resolve_conflict
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.errors import (
    TransactionFailedError,
    WaitTimeoutError,
)
from ccat_buffering.logs import SiteLogger
from ccat_buffering.masking import mask_url
from ccat_buffering.observe.activity import Activity
from ccat_buffering.observe.buffer_loss import BufferLoss, BufferWatch
from ccat_buffering.observe.health import Health, collect
from ccat_buffering.read.reads import Reads
from ccat_buffering.site._lifecycle import Lifecycle
from ccat_buffering.site._submitting import Submitting
from ccat_buffering.site._wiring import (
    apply_conflict_settings,
    batch_sizer,
    largest_batch,
    link_timeouts,
    replication_tracker,
    transaction_manager,
)
from ccat_buffering.write.models import TransactionStatus
from ccat_buffering.write.registry import ModelRegistry

__all__ = [
    "BufferingCoordinator",
    "batch_sizer",
    "largest_batch",
    "link_timeouts",
    "replication_tracker",
    "transaction_manager",
]


class BufferingCoordinator(Submitting, Lifecycle):
    """A site's buffering, draining and confirming, as one object.

    Build it with :meth:`from_settings`, or pass the parts in. Use it as an
    async context manager: it starts the processor and the replication
    tracker on entry (unless ``start=False``) and stops and closes them on exit.

    Args:
        settings: The site's settings.
        backend: The site's stores.
        engine: The main database.
        registry: The mapped classes transactions may name.
        checker: Asks the site's replica; immediate when there is none.
        read_engine: Where reads come from (the replica); the main database
            when ``None``.
        owns: Close ``backend`` and the engines in :meth:`aclose`.
        start: Start the processor and tracker when entered as a context.
    """

    def __init__(
        self,
        settings: BufferingSettings,
        backend: Backend,
        engine: AsyncEngine,
        registry: ModelRegistry,
        *,
        checker: ReplicationChecker | None = None,
        read_engine: AsyncEngine | None = None,
        owns: bool = False,
        start: bool = True,
    ) -> None:
        self.settings = settings
        self.backend = backend
        logs.configure(settings.log_handler, settings.log_format, settings.log_level)
        self.engine = engine
        self.read_engine = read_engine
        self.registry = registry
        self._owns = owns
        self.manager = transaction_manager(settings, backend, registry)
        apply_conflict_settings(settings, registry)
        self.executor = TransactionExecutor(
            engine,
            registry,
            ledger=settings.ledger,
            timeouts=link_timeouts(settings),
            site=backend.site,
            hold=settings.site_type == "secondary",
            ledger_retention=settings.ledger_retention,
        )
        self.processor = BackgroundProcessor(
            self.manager,
            self.executor,
            batch_size=settings.batch_size,
            claim_lease=settings.claim_lease,
            lease_ttl=settings.processor_lease,
            poll_interval=settings.poll_interval,
            outage_base_delay=settings.outage_base_delay,
            outage_max_delay=settings.outage_max_delay,
            probe_interval=settings.outage_probe_interval,
            sizer=batch_sizer(settings),
            prefetch=settings.batch_prefetch,
        )
        self.tracker = replication_tracker(
            settings, self.manager, checker or ImmediateReplicationChecker(), self._leads
        )
        self.reads = Reads(
            backend.cache,
            registry,
            read_engine or engine,
            timeout=settings.read_timeout,
            allow_partial=settings.read_allow_partial,
        )
        self.watch = BufferWatch(engine, backend, state_dir=settings.state_dir)
        self._watch_task: asyncio.Task[None] | None = None
        self.watch_interval = max(settings.poll_interval, 1.0)
        """Seconds between two looks of the buffer watch."""
        self._tracker_task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self.background: set[asyncio.Task[None]] = set()
        self._start_on_enter = start
        self.activity = Activity()
        self.statuses = StatusWatch(backend.status, settings.wait_poll_interval)
        self.tracing = self.processor.tracing
        # A healthy batch is sized to a third of the statement timeout.
        self.processor.stall_after = settings.statement_timeout / 3
        self.manager.listeners.append(self.tracing)  # replicated, on each transaction's trace
        self.log = SiteLogger(__name__, backend.site)

    @classmethod
    def from_settings(
        cls,
        settings: BufferingSettings | None = None,
        *,
        registry: ModelRegistry,
        backend_options: dict[str, Any] | None = None,
        engine_options: dict[str, Any] | None = None,
        replica_engine_options: dict[str, Any] | None = None,
        start: bool = True,
    ) -> BufferingCoordinator:
        """Build every part from settings; the coordinator owns and closes them.

        Both engines get the link timeouts of the settings (connect, statement,
        lock, idle in transaction, TCP keepalive).

        Args:
            settings: The site's settings; read from the environment when ``None``
                (a missing or invalid one raises a short ``ConfigurationError``).
            registry: The mapped classes transactions may name.
            backend_options: Passed to the backend's ``from_url``.
            engine_options: Passed to :func:`~ccat_buffering.create_engine` for
                the main database, over ``settings.database_engine_options``.
            replica_engine_options: The same for the replica, over
                ``settings.replica_engine_options``.
            start: Start the processor and tracker when entered as a context.

        Returns:
            The coordinator (not yet started).
        """
        settings = settings or load_settings()
        backend = open_backend(
            settings.backend_url,
            site=settings.site_name,
            **{**settings.backend_options(), **(backend_options or {})},
        )
        timeouts = link_timeouts(settings)
        engine = create_engine(
            settings.require_url("database_url"),
            timeouts=timeouts,
            **{**settings.database_engine_options, **(engine_options or {})},
        )
        read_engine = None
        checker: ReplicationChecker = ImmediateReplicationChecker()
        if settings.replica_url:
            read_engine = create_engine(
                settings.require_url("replica_url"),
                timeouts=timeouts,
                **{**settings.replica_engine_options, **(replica_engine_options or {})},
            )
            checker = LSNReplicationChecker(read_engine)
        coordinator = cls(
            settings,
            backend,
            engine,
            registry,
            checker=checker,
            read_engine=read_engine,
            owns=True,
            start=start,
        )
        return coordinator

    async def resolve_conflict(self, conflict_id: int, keep: Keep) -> Resolution:
        """Resolve a rejected conflict: apply ``mine`` unchecked, or keep ``theirs`` (drop it).

        The transactions of the same site that waited behind it are then
        applied in buffer order; this site's statuses follow.

        Args:
            conflict_id: The conflict log's id.
            keep: ``mine`` or ``theirs``.

        Returns:
            What was done.

        Raises:
            ConflictError: No such unresolved conflict, or mine cannot be applied.
        """
        return await resolve_conflict(
            self.engine,
            self.registry,
            conflict_id,
            keep,
            statuses=self.backend.status,
            status_ttl=self.settings.status_ttl,
        )

    async def wait(
        self, transaction_id: str, *, until: Until = "committed", timeout: float = 30.0
    ) -> TransactionStatus:
        """Wait until a transaction is committed, or visible on the site's replica.

        No polling loop in the caller: every wait of this process shares one
        poller (see :mod:`ccat_buffering.confirm.waiting` for what it costs the buffer).

        Args:
            transaction_id: From the status :meth:`submit` returned.
            until: ``committed`` (on the main database) or ``replicated``
                (readable from the site's replica).
            timeout: Seconds to wait at most.

        Returns:
            Its status, at ``until`` or past it.

        Raises:
            WaitTimeoutError: Not reached in time; ``.status`` is the last known.
            TransactionFailedError: It was dead-lettered; ``.status`` says why.
            UnknownTransactionError: No status for it (never submitted, or expired).
        """
        self.activity.waiting += 1
        outcome = "unknown"
        try:
            status = await self.statuses.wait(transaction_id, until, timeout)
            outcome = str(status.state)
            return status
        except WaitTimeoutError:
            outcome = "timeout"
            raise
        except TransactionFailedError:
            outcome = "failed"
            raise
        finally:
            self.activity.waiting -= 1
            self.activity.waits[outcome] += 1

    async def health(
        self, *, audit: bool = False, audit_progress: AuditProgress | None = None
    ) -> Health:
        """The site at a glance, with the warnings an operator must see.

        Args:
            audit: Look for keys without a TTL (scans every key of the site:
                slow on a large buffer, so off unless asked for).
            audit_progress: Told how far the audit's scan has gone.
        """
        return await collect(
            self.settings,
            self.backend,
            self.processor,
            self.tracker,
            audit=audit,
            watch=self.watch if self.settings.site_type == "secondary" else None,
            audit_progress=audit_progress,
        )

    async def buffer_losses(self) -> list[BufferLoss]:
        """Losses of buffered state not yet acknowledged.

        See :mod:`ccat_buffering.observe.buffer_loss`.
        """
        if self.settings.site_type != "secondary":
            return []
        return await self.watch.check(record=False)

    async def acknowledge_losses(self) -> int:
        """Mark the recorded losses of buffered state as seen; returns how many there were."""
        return await self.watch.acknowledge()

    async def prepare_database(self) -> None:
        """Create the applied-transactions ledger, or upgrade it to record the site."""
        await self.executor.create_ledger()

    def describe(self) -> dict[str, Literal["main", "secondary"] | str | None]:
        """The site's name, type and masked URLs."""
        return {
            "site": self.backend.site,
            "site_type": self.settings.site_type,
            "backend": mask_url(self.settings.backend_url),
            "database": mask_url(self.settings.database_url),
            "replica": mask_url(self.settings.replica_url),
        }
