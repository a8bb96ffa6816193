"""The one place that knows every part, and wires a site from its settings.

Services receive a :class:`BufferingCoordinator` (by dependency injection)
and call :meth:`~BufferingCoordinator.submit`, :meth:`~BufferingCoordinator.status`
and :attr:`~BufferingCoordinator.reads`; whether the site buffers or writes
directly is a setting, not a change of service code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Literal, Self

from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering import logs
from ccat_buffering._stopping import finish_or_cancel
from ccat_buffering._wiring import (
    apply_conflict_settings,
    batch_sizer,
    link_timeouts,
    replication_tracker,
    transaction_manager,
)
from ccat_buffering.activity import Activity, refusal_reason
from ccat_buffering.backends import open_backend
from ccat_buffering.buffer_loss import BufferLoss, BufferWatch, watch_buffer
from ccat_buffering.cache_writes import generated_writes
from ccat_buffering.conflicts.bases import stamp_write_time, with_bases
from ccat_buffering.conflicts.resolve import Keep, Resolution, resolve_conflict
from ccat_buffering.database import create_engine
from ccat_buffering.errors import (
    BackendError,
    ConflictError,
    TransactionFailedError,
    WaitTimeoutError,
)
from ccat_buffering.executor import TransactionExecutor
from ccat_buffering.health import NO_REPLICA_NOTICE, Health, collect
from ccat_buffering.idempotency import Outcome, submit_once
from ccat_buffering.ledger_pruning import prune_periodically
from ccat_buffering.logs import SiteLogger
from ccat_buffering.manager import as_json
from ccat_buffering.masking import mask_url
from ccat_buffering.models import Transaction, TransactionState, TransactionStatus, utc_now
from ccat_buffering.processor import STOP_GRACE, BackgroundProcessor
from ccat_buffering.protocols import AuditProgress, Backend
from ccat_buffering.reads import Reads
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.replication import (
    ImmediateReplicationChecker,
    LSNReplicationChecker,
    ReplicationChecker,
)
from ccat_buffering.settings import BufferingSettings, load_settings
from ccat_buffering.waiting import StatusWatch, Until

__all__ = [
    "BufferingCoordinator",
    "batch_sizer",
    "link_timeouts",
    "replication_tracker",
    "transaction_manager",
]


class BufferingCoordinator:
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

    async def submit(
        self, transaction: Transaction, *, idempotency_key: str | None = None
    ) -> TransactionStatus:
        """Write a transaction the way the site's type requires.

        A ``secondary`` site buffers it (returns at once, ``buffered``); a
        ``main`` site applies it now and returns ``committed`` (or raises),
        with what the database computed for its creates in ``generated``.

        Args:
            transaction: From :meth:`TransactionBuilder.build`.
            idempotency_key: The client's key for this request: a second
                submit with the same key (and the same steps, ids included:
                submit the same transaction again) returns the first one's
                status and buffers nothing (see :mod:`ccat_buffering.idempotency`).

        Returns:
            Its status (the first transaction's, for a known key).

        Raises:
            TransactionValidationError: Bad input; nothing was written.
            IdempotencyKeyReusedError: The key was used for other steps.
            ExecutionError: At a main site, the database refused it.
        """
        if idempotency_key is not None:
            return (await self.submit_once(transaction, idempotency_key)).status
        return await self._counted(transaction)

    async def submit_once(
        self,
        transaction: Transaction,
        key: str,
        *,
        request: str | None = None,
        response: Any = None,
        status_code: int | None = None,
    ) -> Outcome:
        """Submit under an idempotency key; see :func:`ccat_buffering.idempotency.submit_once`.

        Args:
            transaction: What this request built.
            key: The client's idempotency key.
            request: The request's fingerprint (the transaction's steps by default).
            response: The answer to record for retries.
            status_code: The HTTP status to record for retries.

        Returns:
            The status, whether it was a retry, and the key's record.
        """
        outcome = await submit_once(
            self.backend.status,
            transaction,
            key,
            submit=self._counted,
            status_of=self.status,
            ttl=self.settings.idempotency_ttl,
            request=request,
            response=response,
            status_code=status_code,
        )
        if outcome.replayed:
            self.activity.replays += 1
            self.log.info(
                "idempotency key known: answered with %s (%s)",
                outcome.status.transaction_id,
                outcome.status.state,
                transaction_id=transaction.transaction_id,
            )
        return outcome

    async def _counted(self, transaction: Transaction) -> TransactionStatus:
        tx_id = transaction.transaction_id
        try:
            with self.tracing.sending(transaction) as traced:
                status = await self._submit(traced)
        except Exception as exc:
            reason = refusal_reason(exc)
            self.activity.refusals[reason] += 1
            self.log.info("submit refused (%s): %s", reason, exc, transaction_id=tx_id)
            raise
        self.activity.submits[str(status.state)] += 1
        self.log.info("submitted: %s", status.state, transaction_id=tx_id)
        return status

    async def _submit(self, transaction: Transaction) -> TransactionStatus:
        transaction = await self._with_bases(transaction)
        if self.settings.site_type == "secondary":
            return await self.manager.buffer(transaction)
        transaction.to_json(self.settings.max_payload_bytes)
        result = await self.executor.execute_batch([transaction])
        outcome = result.outcomes[0]
        self.manager.found_conflicts(outcome.conflicts)
        if outcome.conflicted:
            raise ConflictError(
                "; ".join(c.describe() for c in outcome.conflicts)
                + " (see `ccat-buffering conflicts list`)",
                outcome.conflicts,
            )
        if outcome.error is not None:
            raise outcome.error
        self.tracing.committed([transaction], result.commit_lsn)
        now = utc_now()
        status = TransactionStatus(
            transaction_id=transaction.transaction_id,
            endpoint=transaction.endpoint,
            state=TransactionState.COMMITTED,
            created_at=transaction.created_at,
            committed_at=now,
            commit_lsn=result.commit_lsn,
            generated=as_json(outcome.generated),
        )
        # A row keyed by the database is cached under that key until the replica
        # has it (released with the transaction), so the site's reads find it now.
        writes = generated_writes(transaction, outcome.generated)
        async with self.backend.atomic() as batch:
            batch.put_status(status, self.settings.status_ttl)
            if writes:
                batch.write_cache(transaction.transaction_id, writes, self.manager.cache_ttl)
        return status

    async def _with_bases(self, transaction: Transaction) -> Transaction:
        """Converted, stamped with its write time, and based on what the site sees now."""
        if not isinstance(transaction, Transaction):
            return transaction  # the manager refuses it with the usual message
        transaction = self.registry.convert(transaction)
        transaction = stamp_write_time(transaction, self.registry, utc_now())
        return await with_bases(
            transaction,
            lambda model, key: self.reads.get(model, key),
            self.registry,
            lambda model, keys: self.reads.get_many(model, keys),
        )

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

    async def status(self, transaction_id: str) -> TransactionStatus | None:
        """The status of a transaction, or ``None`` if unknown or expired."""
        return await self.manager.status(transaction_id)

    async def wait(
        self, transaction_id: str, *, until: Until = "committed", timeout: float = 30.0
    ) -> TransactionStatus:
        """Wait until a transaction is committed, or visible on the site's replica.

        No polling loop in the caller: every wait of this process shares one
        poller (see :mod:`ccat_buffering.waiting` for what it costs the buffer).

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
        """Losses of buffered state not yet acknowledged (see :mod:`ccat_buffering.buffer_loss`)."""
        if self.settings.site_type != "secondary":
            return []
        return await self.watch.check(record=False)

    async def acknowledge_losses(self) -> int:
        """Mark the recorded losses of buffered state as seen; returns how many there were."""
        return await self.watch.acknowledge()

    async def prepare_database(self) -> None:
        """Create the applied-transactions ledger, or upgrade it to record the site."""
        await self.executor.create_ledger()

    async def _leads(self) -> bool:
        """Whether this process confirms the site's replication: the lease holder does.

        At a secondary site the draining processor holds the site's lease; at a
        main site nothing drains, and the tracker takes the same lease itself,
        so that one process per site marks ``replicated`` and counts it once.
        """
        lease = self.processor.lease
        if self.settings.site_type == "secondary":
            return lease.held
        try:
            if lease.held and await lease.still_held():
                return True
            lease.held = False
            return await lease.take()
        except BackendError:
            return False

    def start(self) -> None:
        """Start the processor (secondary sites) and the replication tracker.

        Services do not call it (they submit and read; the worker drains):
        see :func:`ccat_buffering.fastapi.lifespan`.
        """
        if self.settings.site_type == "secondary":
            if not self.settings.replica_url:
                SiteLogger(__name__, self.backend.site).warning(NO_REPLICA_NOTICE)
            self.processor.start()
            if self.watch.supported and (self._watch_task is None or self._watch_task.done()):
                self._watch_task = asyncio.create_task(self._watching(), name="buffer-watch")
            pruning = self.settings.ledger and self.settings.ledger_prune_interval > 0
            if pruning and (self._prune_task is None or self._prune_task.done()):
                self._prune_task = asyncio.create_task(
                    prune_periodically(
                        self.engine,
                        self.backend,
                        retention=self.settings.ledger_retention,
                        interval=self.settings.ledger_prune_interval,
                        batch_size=self.settings.ledger_prune_batch,
                    ),
                    name="ledger-pruning",
                )
        if self._tracker_task is None or self._tracker_task.done():
            self._tracker_task = asyncio.create_task(self.tracker.run(), name="replication-tracker")

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the processor after its batch, and the tracker after its poll, in bounded time.

        Returns within ``grace`` plus :data:`~ccat_buffering._stopping.CANCEL_BOUND`
        seconds whatever the buffer watch, the link or the buffer is doing:
        what does not finish in time is cancelled (see :mod:`ccat_buffering._stopping`).

        Args:
            grace: Seconds the processor's batch and the tracker's poll may
                take to finish before they are cancelled.
        """
        log = SiteLogger(__name__, self.backend.site)
        tasks = [*self.background]
        self.background.clear()
        watch, self._watch_task = self._watch_task, None
        tracker, self._tracker_task = self._tracker_task, None
        prune, self._prune_task = self._prune_task, None
        self.tracker.stop()
        stopping: list[Coroutine[Any, Any, object]] = [
            finish_or_cancel(task, log=log) for task in tasks
        ]
        for job in (watch, prune):
            if job is not None:
                stopping.append(finish_or_cancel(job, log=log))
        if tracker is not None:
            stopping.append(finish_or_cancel(tracker, grace=grace, log=log))
        stopping.append(self.processor.stop(grace))
        for outcome in await asyncio.gather(*stopping, return_exceptions=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, Exception):
                log.error("a background task failed while stopping: %s", outcome)
        if self.settings.site_type == "main":
            with contextlib.suppress(BackendError):
                await self.processor.lease.release()

    async def _watching(self) -> None:
        """Check the buffer against the main database at start and every second."""
        await watch_buffer(self.watch, self.watch_interval)

    async def aclose(self) -> None:
        """Stop, then close what the coordinator owns."""
        await self.stop()
        await self.statuses.aclose()
        if self._owns:
            await self.backend.aclose()
            await self.engine.dispose()
            if self.read_engine is not None:
                await self.read_engine.dispose()

    async def __aenter__(self) -> Self:
        """Start the background work (unless built with ``start=False``)."""
        if self._start_on_enter:
            self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop and close."""
        await self.aclose()

    def describe(self) -> dict[str, Literal["main", "secondary"] | str | None]:
        """The site's name, type and masked URLs."""
        return {
            "site": self.backend.site,
            "site_type": self.settings.site_type,
            "backend": mask_url(self.settings.backend_url),
            "database": mask_url(self.settings.database_url),
            "replica": mask_url(self.settings.replica_url),
        }
