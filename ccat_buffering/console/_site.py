"""What the console looks at and acts on: a site's stores, and the main database if it has it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ccat_buffering.buffer_loss import BufferLoss
from ccat_buffering.executor import TransactionExecutor
from ccat_buffering.health import Health
from ccat_buffering.manager import TransactionManager
from ccat_buffering.protocols import Backend
from ccat_buffering.settings import BufferingSettings

__all__ = ["ConsoleSite"]


async def _no_losses() -> list[BufferLoss]:
    return []


async def _no_conflicts() -> list[dict[str, Any]] | None:
    return None


@dataclass
class ConsoleSite:
    """The parts of a site the console uses.

    Build it from a running :class:`~ccat_buffering.BufferingCoordinator`
    with :meth:`of`, or from the operator's view of a site (as ``ccat-buffering
    console`` does).

    Attributes:
        settings: The site's settings.
        backend: The site's stores.
        manager: Replays through it (statuses and caches come back).
        health: Puts the site's health together.
        executor: The main database, for dry-run replays; ``None`` without one.
        buffer_losses: Losses of buffered state not yet acknowledged.
        conflicts: The hook for conflicts (base / mine / theirs): ``None`` while
            the library keeps no conflict log; a list of dicts once it does.
    """

    settings: BufferingSettings
    backend: Backend
    manager: TransactionManager
    health: Callable[[], Awaitable[Health]]
    executor: TransactionExecutor | None = None
    buffer_losses: Callable[[], Awaitable[list[BufferLoss]]] = _no_losses
    conflicts: Callable[[], Awaitable[list[dict[str, Any]] | None]] = field(default=_no_conflicts)

    @classmethod
    def of(cls, site: Any) -> ConsoleSite:
        """The console's view of a :class:`~ccat_buffering.BufferingCoordinator`."""
        return cls(
            settings=site.settings,
            backend=site.backend,
            manager=site.manager,
            health=site.health,
            executor=site.executor,
            buffer_losses=site.buffer_losses,
        )
