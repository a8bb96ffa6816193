"""What a loss report names: the transactions gone, counted exactly; no report when none is."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from ccat_buffering._loss_records import BufferLoss, insert_loss, loss_metadata
from ccat_buffering._loss_store import ADDED_COLUMNS
from ccat_buffering._sightings import BufferOrigin
from ccat_buffering.buffer_loss import BufferWatch
from ccat_buffering.errors import BackendUnavailableError
from ccat_buffering.manager import TransactionManager
from ccat_buffering.models import Transaction
from ccat_buffering.testing import new_site_name
from ccat_buffering_memory import MemoryBackend

from support import observation, sqlite_url

OLD, NEW = "a" * 40, "b" * 40


class _Replicated:
    """A memory backend's stores behind a replication history the test sets."""

    def __init__(self, inner: MemoryBackend, origin: BufferOrigin) -> None:
        self.use(inner)
        self.origin = origin

    def use(self, inner: MemoryBackend) -> None:
        self.site, self.buffer, self.status = inner.site, inner.buffer, inner.status

    async def buffer_origin(self) -> BufferOrigin:
        return self.origin

    async def buffer_mark(self) -> tuple[str | None, int]:
        return self.origin.epoch, self.origin.seq

    async def stamp_buffer(self, epoch: str, *, replace: bool = False) -> bool:
        return True


async def _holding(site: str, transactions: list[Transaction]) -> MemoryBackend:
    backend = MemoryBackend(site)
    for tx in transactions:
        await TransactionManager(backend).buffer(tx)
    return backend


async def test_a_loss_names_the_transactions_gone_and_two_masters_counters_are_none(
    tmp_path: Path,
) -> None:
    site = new_site_name()
    transactions = [observation(i)[0] for i in range(3)]
    before = BufferOrigin("e1 1", 30, OLD, 100, replicated=True, own_offset=100)
    backend = _Replicated(await _holding(site, transactions), before)
    watch = BufferWatch(None, backend, state_dir=tmp_path)  # type: ignore[arg-type]
    assert await watch.check() == []
    assert sorted(watch.sightings.read().held_ids or []) == sorted(
        tx.transaction_id for tx in transactions
    )

    # A failover to a replica holding everything seen, whose counter is lower (it numbers
    # fewer claims): two masters' counters, not a loss.
    backend.origin = BufferOrigin(
        "e1 1", 5, NEW, 60, previous_history=OLD, fork_offset=150, replicated=True, own_offset=60
    )
    assert await watch.check() == []

    # A new master that forked before the last sighting and lacks one of its transactions:
    # that one is named and counted, not the three held nor the range.
    watch.sightings.path.unlink()
    backend.origin = before
    assert await watch.check() == []
    backend.use(await _holding(site, transactions[:2]))
    backend.origin = BufferOrigin(
        "e1 1", 28, NEW, 60, previous_history=OLD, fork_offset=90, replicated=True, own_offset=60
    )
    (loss,) = await watch.check()
    assert loss.missing == 1 and loss.missing_ids == (transactions[2].transaction_id,)
    assert loss.held == 3 and loss.open_ended  # what was acknowledged after it is unseen
    assert f"1 of them gone: {transactions[2].transaction_id}" in loss.describe()


async def test_a_loss_the_buffer_cannot_name_is_kept_as_a_range(tmp_path: Path) -> None:
    site = new_site_name()
    before = BufferOrigin("e1 1", 30, OLD, 100, replicated=True, own_offset=100)
    backend = _Replicated(await _holding(site, [observation(1)[0]]), before)
    watch = BufferWatch(None, backend, state_dir=tmp_path)  # type: ignore[arg-type]
    assert await watch.check() == []

    class _Refusing:
        async def ids(self, state: object, limit: object = None) -> list[str]:
            return []

        async def get_many(self, ids: object) -> list[object]:
            raise BackendUnavailableError("redis at 127.0.0.1:1 refused the connection")

    backend.status = _Refusing()  # type: ignore[assignment]
    backend.origin = BufferOrigin(
        "e1 1", 28, NEW, 60, previous_history=OLD, fork_offset=90, replicated=True, own_offset=60
    )
    (loss,) = await watch.check()
    assert loss.missing is None and loss.held == 1 and "sequence numbers" in loss.describe()
    assert len(watch.sightings.read().losses) == 1  # kept on disk all the same


async def test_a_losses_table_of_the_first_version_is_read_then_upgraded(tmp_path: Path) -> None:
    engine = create_async_engine(sqlite_url(tmp_path))
    old = sa.MetaData()
    for table in loss_metadata.tables.values():
        kept = [
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in table.c
            if c.name not in ADDED_COLUMNS
        ]
        sa.Table(table.name, old, *kept)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(old.create_all)
        site = new_site_name()
        when = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
        earlier = BufferLoss(when, when, "its marker is gone", 5, None, 2)
        async with engine.begin() as conn:
            await conn.execute(
                sa.insert(old.tables["ccat_buffer_losses"]).values(
                    site=site, detected_at=when, since=when, cause=earlier.cause,
                    seen_seq=5, found_seq=None, held=2,
                )
            )  # fmt: skip
        store = BufferWatch(engine, MemoryBackend(site), state_dir=tmp_path).store
        # status (read-only) reads the old table as it is ...
        (read,) = await store.database_losses()
        assert read.held == 2 and read.missing is None
        # ... and a worker adds the new columns, then records what is gone.
        await store.create_tables()
        later = BufferLoss(when, when, "another marker", 9, None, 3, missing=1, missing_ids=("t",))
        async with engine.begin() as conn:
            await insert_loss(conn, site, later)
        assert [loss.missing_ids for loss in await store.database_losses()] == [(), ("t",)]
    finally:
        await engine.dispose()
