"""The site the operator commands look at: the buffer, and the replica only if set.

``status``, ``inspect``, ``dlq`` and ``keys`` read the backend's stores; none
of them writes transactions to the main database (a default SQLite URL once
made every one of them fail on a machine without aiosqlite). A configured
replica is opened by ``status``, to ask how far it has replayed; a configured
main database is opened by ``status`` and ``inspect`` only to compare the
buffer with what it remembers of it (:mod:`ccat_buffering.observe.buffer_loss`), since
Redis cannot tell that it forgot. Without ``database_url`` that check is
skipped, and said so.
"""

from __future__ import annotations

from typing import Self

from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer.protocols import AuditProgress, Backend
from ccat_buffering.config._settings_checks import check_driver
from ccat_buffering.config.backends import open_backend
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.confirm.replication import (
    ImmediateReplicationChecker,
    LSNReplicationChecker,
    ReplicationChecker,
)
from ccat_buffering.drain.database import create_engine
from ccat_buffering.errors import ConfigurationError
from ccat_buffering.observe._loss_look import look
from ccat_buffering.observe.buffer_loss import BufferLoss, BufferWatch
from ccat_buffering.observe.health import Health, collect
from ccat_buffering.site.coordinator import link_timeouts, replication_tracker, transaction_manager
from ccat_buffering.write.models import TransactionStatus

__all__ = ["OperatorSite", "open_site"]


class OperatorSite:
    """A site's stores, for commands that look and fix, not drain.

    It has the attributes of :class:`~ccat_buffering.BufferingCoordinator`
    that the operator commands use (``settings``, ``backend``, ``manager``,
    :meth:`health`, :meth:`status`), so tests can hand the commands a
    coordinator instead.

    Args:
        settings: The site's settings.
        backend: The site's stores (owned: closed on exit).
        replica: The replica, if the settings name one (owned).
        database: The main database, if the settings name one (owned), for the
            buffer-loss check.
    """

    def __init__(
        self,
        settings: BufferingSettings,
        backend: Backend,
        replica: AsyncEngine | None = None,
        database: AsyncEngine | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self._replica = replica
        self._database = database
        self.watch = BufferWatch(database, backend, state_dir=settings.state_dir)
        self.manager = transaction_manager(settings, backend)
        checker: ReplicationChecker = (
            ImmediateReplicationChecker() if replica is None else LSNReplicationChecker(replica)
        )
        self.tracker = replication_tracker(settings, self.manager, checker)

    async def health(
        self, *, audit: bool = False, audit_progress: AuditProgress | None = None
    ) -> Health:
        """The site's health, as the draining worker published it."""
        return await collect(
            self.settings,
            self.backend,
            None,
            self.tracker,
            audit=audit,
            watch=self.watch,
            audit_progress=audit_progress,
        )

    async def buffer_losses(self) -> list[BufferLoss]:
        """Losses of buffered state not yet acknowledged (this host's, and the database's)."""
        return await look(self.watch)  # check(record=False) in one statement

    async def acknowledge_losses(self) -> int:
        """Mark the recorded losses as seen; returns how many there were.

        Raises:
            ConfigurationError: No ``database_url``: losses are recorded there.
        """
        if self._database is None:
            raise ConfigurationError(
                "acknowledging losses needs the main database, where they are recorded: "
                "set CCAT_BUFFERING_DATABASE_URL or pass --database-url"
            )
        return await self.watch.acknowledge()

    async def status(self, transaction_id: str) -> TransactionStatus | None:
        """A transaction's status, or ``None``."""
        return await self.manager.status(transaction_id)

    async def __aenter__(self) -> Self:
        """Nothing to start."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the backend and the replica."""
        await self.backend.aclose()
        for engine in (self._replica, self._database):
            if engine is not None:
                await engine.dispose()


def open_site(
    settings: BufferingSettings,
    *,
    replica: bool = False,
    database: bool = False,
    lean_database: bool = False,
) -> OperatorSite:
    """Open the site's backend (and its replica when asked and configured).

    Tests replace this to hand the commands a prepared site.

    Args:
        settings: The site's settings.
        replica: Open the replica too (``status`` asks it about pending commits).
        database: Open the main database too, when the settings name one and its
            driver is installed, to check the buffer for lost state.
        lean_database: Open it without the dialect's first-connect queries, for a
            command that only reads the library's own loss tables (``status``).
    """
    engine = None
    if replica and settings.replica_url:
        engine = create_engine(
            settings.require_url("replica_url"),
            timeouts=link_timeouts(settings),
            **settings.replica_engine_options,
        )
    main = None
    if database and settings.database_url and settings.site_type == "secondary":
        try:
            check_driver("database_url", settings.database_url)
        except ConfigurationError:
            pass  # the loss check is skipped; nothing else here needs the database
        else:
            # Without the dialect's first-connect queries (server version, schema,
            # isolation level, codecs): nine round trips of a status 200 ms from the
            # main database, for statements on two tables of our own that need none of it.
            # The dialect's version-dependent features stay unknown on such an
            # engine: it serves plain statements only, never reflection or ORM writes.
            lean = {"_initialize": False} if lean_database else {}
            main = create_engine(
                settings.database_url,
                timeouts=link_timeouts(settings),
                **lean,
                **settings.database_engine_options,
            )
    backend = open_backend(
        settings.backend_url, site=settings.site_name, **settings.backend_options()
    )
    return OperatorSite(settings, backend, engine, main)
