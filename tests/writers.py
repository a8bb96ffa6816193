"""Three writers of one main database: the main site and two secondary sites.

Each party is a full :class:`~ccat_buffering.BufferingCoordinator` built from
settings (not started: each test drains the secondary sites itself, in the
order it wants). Without replicas, each site's view of a row is the main
database overlaid by its own buffered writes: what a site with an up-to-date
replica sees.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from services import REDIS_URL, forget_site, redis_client
from sqlalchemy import JSON, DateTime, Integer, String, Uuid, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering import BufferingCoordinator, BufferingSettings, TransactionBuilder
from ccat_buffering.conflicts.log import ConflictRecord, list_conflicts
from ccat_buffering.write.models import TransactionStatus
from ccat_buffering.write.registry import ModelRegistry


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "cx_note"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(String(100))
    status: Mapped[str | None] = mapped_column(String(50), nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    code: Mapped[str | None] = mapped_column(String(50), unique=True, nullable=True)
    written_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Versioned(Base):
    __tablename__ = "cx_versioned"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


@dataclass
class Parties:
    """The main site and the secondary sites ``a`` and ``b``."""

    main: BufferingCoordinator
    a: BufferingCoordinator
    b: BufferingCoordinator

    async def write(self, party: BufferingCoordinator, fill: Any) -> TransactionStatus:
        """Submit one transaction that ``fill(builder)`` builds."""
        tx = TransactionBuilder("edit", registry=party.registry)
        fill(tx)
        return await party.submit(tx.build())

    async def drain(self, party: BufferingCoordinator) -> None:
        assert await party.processor.drain(timeout=20), "the site did not drain"

    async def row(self, model: type[Any], key: Any) -> Any:
        async with self.main.engine.connect() as conn:
            return (await conn.execute(select(model).where(model.id == key))).first()

    async def conflicts(self) -> list[ConflictRecord]:
        async with self.main.engine.connect() as conn:
            return list(reversed(await list_conflicts(conn)))


def _settings(name: str, url: str, site_type: str, backend: str, **extra: Any) -> BufferingSettings:
    return BufferingSettings(  # type: ignore[call-arg]
        site_name=name,
        site_type=site_type,
        backend_url=backend,
        database_url=url,
        poll_interval=0.01,
        batch_prefetch=False,
        batch_size_adaptive=False,
        **extra,
    )


@asynccontextmanager
async def parties(
    url: str, *, backend: str = "memory://", batch_size: int = 100, **extra: Any
) -> AsyncIterator[Parties]:
    """Three coordinators over the main database at ``url``; schema and log created."""
    tag = uuid.uuid4().hex[:8]
    names = {"main": f"main-{tag}", "a": f"test-a-{tag}", "b": f"test-b-{tag}"}
    built = {}
    for role, name in names.items():
        site_backend = "memory://" if role == "main" else backend
        settings = _settings(
            name,
            url,
            "main" if role == "main" else "secondary",
            site_backend,
            batch_size=batch_size,
            **extra,
        )
        built[role] = BufferingCoordinator.from_settings(
            settings, registry=ModelRegistry.from_base(Base), start=False
        )
    try:
        async with built["main"].engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await built["main"].prepare_database()
        yield Parties(built["main"], built["a"], built["b"])
    finally:
        for site in built.values():
            await site.aclose()
        if backend.startswith("redis"):
            client = await redis_client()
            for name in names.values():
                await forget_site(client, f"site:{{{name}}}:*")
            await client.aclose()  # type: ignore[attr-defined]


REDIS = REDIS_URL
