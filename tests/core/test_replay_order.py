"""Replays keep order: back to the head, in original buffer order, dependents with them."""

from __future__ import annotations

from sqlalchemy import func, select

from ccat_buffering.buffer.replays import rehearse, replay_set
from ccat_buffering.demo.example import ExecutedObsUnit
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction, TransactionState

from support import Site, observation, units_in_order


def _rename(obs_id: str, name: str) -> Transaction:
    tx = TransactionBuilder("rename")
    tx.update(ExecutedObsUnit, obs_id, {"status": name})
    return tx.build()


async def _park(site: Site, txs: list[Transaction]) -> None:
    """Buffer ``txs`` and dead-letter them in order, as failed attempts would."""
    await site.manager.buffer_many(txs)
    for _ in txs:
        (claim,) = await site.backend.buffer.claim(1, 60)
        tx = Transaction.from_json(claim.payload)
        assert await site.backend.buffer.dead_letter(claim.receipt, "boom", tx.transaction_id)


async def _settle(site: Site) -> None:
    for _ in range(50):
        stats = await site.backend.buffer.stats()
        if stats.depth == 0 and stats.in_flight == 0:
            return
        await site.processor.run_once()
    raise AssertionError("the buffer did not settle")


async def test_a_create_and_its_dependents_go_back_to_the_head_in_order(db_site: Site) -> None:
    site = db_site
    create, obs_id = observation(1)
    first, second = _rename(obs_id, "first"), _rename(obs_id, "second")
    unrelated = observation(2)[0]
    await _park(site, [create, first, unrelated, second])
    waiting = observation(3)[0]
    await site.manager.buffer(waiting)

    replayed = await site.manager.replay([create.transaction_id])
    assert replayed == [create.transaction_id, first.transaction_id, second.transaction_id]
    assert [letter.letter_id for letter in await site.backend.dead_letters.list()] == [
        unrelated.transaction_id
    ]
    claimed = await site.manager.claim(10, 60)
    assert [d.transaction_id for d in claimed] == [
        create.transaction_id,
        first.transaction_id,
        second.transaction_id,
        waiting.transaction_id,
    ]
    await site.backend.buffer.recover(include_unexpired=True)
    await _settle(site)
    assert sorted(await units_in_order(site.engine)) == [1, 3]
    async with site.engine.connect() as conn:
        status = (await conn.execute(select(ExecutedObsUnit.status))).scalars().all()
    assert "second" in status  # the updates applied after the create, in order
    for tx in (create, first, second, waiting):
        got = await site.manager.status(tx.transaction_id)
        assert got is not None and got.state is TransactionState.COMMITTED


async def test_replay_set_orders_by_original_buffer_order_not_arrival(db_site: Site) -> None:
    site = db_site
    create, obs_id = observation(1)
    update = _rename(obs_id, "later")
    # Dead-lettered in the reverse order (the update failed first, the create on a retry).
    await _park(site, [update])
    await _park(site, [create])
    letters = await site.backend.dead_letters.list()
    assert [letter.letter_id for letter in letters] == [
        update.transaction_id,
        create.transaction_id,
    ]
    ordered = replay_set(letters, None)
    assert [letter.letter_id for letter in ordered] == [
        create.transaction_id,
        update.transaction_id,
    ]


async def test_dry_run_reports_per_letter_and_changes_nothing(db_site: Site) -> None:
    site = db_site
    create, obs_id = observation(1)
    update = _rename(obs_id, "x")
    orphan = _rename("no-such-unit", "y")
    await _park(site, [create, update, orphan])
    letters = replay_set(await site.backend.dead_letters.list(), None)
    reports = await rehearse(site.executor, letters)
    assert [(r.letter_id, r.outcome) for r in reports] == [
        (create.transaction_id, "applies"),
        (update.transaction_id, "applies"),  # it sees the create before it
        (orphan.transaction_id, "conflicts"),  # update_missing: another party's delete
    ]
    assert reports[2].error and "no-such-unit" in reports[2].error
    async with site.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(ExecutedObsUnit))).scalar()
    assert count == 0
    assert len(await site.backend.dead_letters.list()) == 3
    # Without its create, the update alone would fail.
    alone = replay_set(await site.backend.dead_letters.list(), [orphan.transaction_id])
    assert [letter.letter_id for letter in alone] == [orphan.transaction_id]
