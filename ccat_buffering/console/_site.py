"""What the console looks at and acts on: a site's stores, and the main database if it has it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer_loss import BufferLoss
from ccat_buffering.executor import TransactionExecutor
from ccat_buffering.health import Health
from ccat_buffering.manager import TransactionManager
from ccat_buffering.protocols import Backend
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.settings import BufferingSettings

__all__ = ["ConsoleSite"]


async def _no_losses() -> list[BufferLoss]:
    return []


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
        engine: The main database, where the conflict log is; ``None`` without one.
        registry: The mapped classes, to apply a conflict's ``mine``.
        peers: The other sites of an all-sites console, by name (their
            statuses follow a resolution of their conflicts).
    """

    settings: BufferingSettings
    backend: Backend
    manager: TransactionManager
    health: Callable[[], Awaitable[Health]]
    executor: TransactionExecutor | None = None
    buffer_losses: Callable[[], Awaitable[list[BufferLoss]]] = _no_losses
    engine: AsyncEngine | None = None
    registry: ModelRegistry | None = None
    peers: dict[str, ConsoleSite] = field(default_factory=dict)

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
            engine=site.engine,
            registry=site.registry,
        )
