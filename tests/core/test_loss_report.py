"""What a loss report names: the transactions gone, counted exactly; no report when none is."""

from __future__ import annotations

from pathlib import Path

from ccat_buffering._sightings import BufferOrigin
from ccat_buffering.buffer_loss import BufferWatch
from ccat_buffering.manager import TransactionManager
from ccat_buffering.models import Transaction
from ccat_buffering.testing import new_site_name
from ccat_buffering_memory import MemoryBackend

from support import observation

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
