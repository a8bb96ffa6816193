"""The psycopg pipeline path: one round trip per batch, isolation, ledger, order."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from pg import fresh_database
from sqlalchemy import (
    JSON,
    Date,
    Enum,
    ForeignKey,
    Numeric,
    String,
    Uuid,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.demo.example import Base, ExecutedObsUnit, RawDataPackage
from ccat_buffering.drain.database import create_engine, ledger_table
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.registry import ModelRegistry

from support import make_schema, observation, orphan_package, units_in_order


def psycopg_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


@pytest_asyncio.fixture
async def relay() -> AsyncIterator[tuple[LoopbackRelay, str]]:
    async with fresh_database() as url:
        setup = create_engine(url)
        await make_schema(setup)
        await TransactionExecutor(setup, ModelRegistry.from_base(Base)).create_ledger()
        await setup.dispose()
        target = make_url(url)
        proxy = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432)
        await proxy.start()
        try:
            yield (
                proxy,
                psycopg_url(
                    target.set(host="127.0.0.1", port=proxy.port).render_as_string(
                        hide_password=False
                    )
                ),
            )
        finally:
            await proxy.stop()


async def _executor(url: str) -> tuple[AsyncEngine, TransactionExecutor]:
    engine = create_engine(url)
    return engine, TransactionExecutor(engine, ModelRegistry.from_base(Base))


async def _count(engine: AsyncEngine, column: object) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count(column)))).scalar_one())  # type: ignore[arg-type]


async def _round_trips(
    proxy: LoopbackRelay, engine: AsyncEngine, executor: TransactionExecutor, txs: list
) -> tuple[int, object]:  # type: ignore[type-arg]
    async with engine.connect() as conn:  # a warm connection in the pool
        await conn.exec_driver_sql("SELECT 1")
    await executor.load_conflicts()  # once per process, not per batch
    before = proxy.counters.round_trips
    result = await executor.execute_batch(txs)
    return proxy.counters.round_trips - before, result


async def test_a_batch_is_one_round_trip_and_reads_the_lsn(
    relay: tuple[LoopbackRelay, str],
) -> None:
    proxy, url = relay
    engine, executor = await _executor(url)
    try:
        trips, result = await _round_trips(
            proxy, engine, executor, [observation(i)[0] for i in range(300)]
        )
        assert all(o.applied for o in result.outcomes)  # type: ignore[attr-defined]
        assert result.all_done  # type: ignore[attr-defined]
        assert result.commit_lsn is not None  # type: ignore[attr-defined]
        # one for the pipeline, one for the pool's ROLLBACK at check-in
        assert trips <= 2, trips
        assert await _count(engine, ExecutedObsUnit.id) == 300
        assert await _count(engine, ledger_table.c.transaction_id) == 300
        assert await units_in_order(engine) == list(range(300))
    finally:
        await engine.dispose()


async def test_a_prepared_batch_serves_only_the_very_transactions_it_was_made_of(
    relay: tuple[LoopbackRelay, str],
) -> None:
    proxy, url = relay
    engine, executor = await _executor(url)
    try:
        first = [observation(i)[0] for i in range(20)]
        second = [observation(i)[0] for i in range(20, 50)]
        executor.prepare(first)
        trips, result = await _round_trips(proxy, engine, executor, second)  # prepared anew
        assert trips <= 2, trips
        assert [o.transaction_id for o in result.outcomes] == [t.transaction_id for t in second]  # type: ignore[attr-defined]
        assert all(o.applied for o in result.outcomes)  # type: ignore[attr-defined]
        assert await _count(engine, ExecutedObsUnit.id) == 30
        executor.prepare(first)
        trips, again = await _round_trips(proxy, engine, executor, list(first))
        assert trips <= 2, trips
        assert [o.transaction_id for o in again.outcomes] == [t.transaction_id for t in first]  # type: ignore[attr-defined]
        assert all(o.applied for o in again.outcomes)  # type: ignore[attr-defined]
        # Used once: a redelivery of the same objects reads the ledger afresh.
        redelivered = await executor.execute_batch(first)
        assert all(o.already_applied for o in redelivered.outcomes)
        assert not redelivered.all_done
        assert await _count(engine, ExecutedObsUnit.id) == 50
        assert await _count(engine, ledger_table.c.transaction_id) == 50
    finally:
        await engine.dispose()


async def test_poison_and_redelivery_cost_one_more_round_trip(
    relay: tuple[LoopbackRelay, str],
) -> None:
    proxy, url = relay
    engine, executor = await _executor(url)
    try:
        applied = [observation(i)[0] for i in range(10)]
        assert all(o.applied for o in (await executor.execute_batch(applied)).outcomes)
        fresh = [observation(i)[0] for i in range(10, 60)]
        poison = orphan_package(3)
        batch = [*applied[:5], *fresh[:20], poison, *fresh[20:], applied[7]]
        trips, result = await _round_trips(proxy, engine, executor, batch)
        outcomes = result.outcomes  # type: ignore[attr-defined]
        assert not result.all_done  # type: ignore[attr-defined]
        assert trips <= 3, trips
        assert [o.already_applied for o in outcomes[:5]] == [True] * 5
        assert outcomes[25].kind is FailureKind.DATA and "foreign key" in str(outcomes[25].error)
        assert all(o.applied for o in outcomes[5:25])
        # nothing after the failure applies before it is retried
        assert all(o.waiting for o in outcomes[26:-1])
        assert outcomes[-1].already_applied  # applied by an earlier batch: nothing to wait for
        assert await _count(engine, ExecutedObsUnit.id) == 30
        assert await _count(engine, RawDataPackage.id) == 30
        assert await _count(engine, ledger_table.c.transaction_id) == 30
    finally:
        await engine.dispose()


async def test_updates_deletes_and_a_missing_row_fail_their_own_transaction(
    relay: tuple[LoopbackRelay, str],
) -> None:
    _proxy, url = relay
    engine, executor = await _executor(url)
    try:
        first, obs_id = observation(1)
        assert (await executor.execute_batch([first])).outcomes[0].applied
        change = TransactionBuilder("finish")
        change.update(ExecutedObsUnit, {"id": obs_id}, {"status": "done"})
        missing = TransactionBuilder("finish-missing")
        missing.update(ExecutedObsUnit, {"id": "nope"}, {"status": "done"})
        gone = TransactionBuilder("delete")
        gone.delete(RawDataPackage, {"name": "pkg-1"}) if False else None
        result = await executor.execute_batch([change.build(), missing.build(), observation(2)[0]])
        assert result.outcomes[0].applied and result.outcomes[2].applied
        # A missing row is a conflict (update_missing), rejected by default: it
        # waits for an operator instead of being retried as bad data, so it
        # holds nothing and the transaction after it applies in the same batch.
        assert result.outcomes[1].conflicted and result.outcomes[1].error is None
        assert not result.outcomes[1].waiting and not result.outcomes[1].holds
        assert result.outcomes[1].conflicts[0].kind == "update_missing"
        async with engine.connect() as conn:
            status = (
                await conn.execute(
                    text("SELECT status FROM executed_obs_unit WHERE id = :id"), {"id": obs_id}
                )
            ).scalar()
        assert status == "done"
    finally:
        await engine.dispose()


async def test_a_deferred_constraint_at_commit_is_found_by_bisection(
    relay: tuple[LoopbackRelay, str],
) -> None:
    _proxy, url = relay
    engine, executor = await _executor(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "ALTER TABLE raw_data_package ALTER CONSTRAINT "
                    "raw_data_package_executed_obs_unit_id_fkey DEFERRABLE INITIALLY DEFERRED"
                )
            )
        txs = [observation(i)[0] for i in range(30)]
        poison = orphan_package(3)
        result = await executor.execute_batch([*txs[:11], poison, *txs[11:]])
        assert result.outcomes[11].kind is FailureKind.DATA
        assert "foreign key" in str(result.outcomes[11].error)
        assert all(o.applied for o in result.outcomes[:11])
        assert all(o.waiting for o in result.outcomes[12:])
        assert await _count(engine, ExecutedObsUnit.id) == 11
    finally:
        await engine.dispose()


class Mode(enum.Enum):
    SKY = "sky"
    DARK = "dark"


class WorldBase(DeclarativeBase):
    pass


class Night(WorldBase):
    __tablename__ = "night"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    date: Mapped[dt.date] = mapped_column(Date)
    mode: Mapped[Mode] = mapped_column(Enum(Mode, name="night_mode"))
    meta: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    seeing: Mapped[decimal.Decimal] = mapped_column(Numeric(6, 3))


class Target(WorldBase):
    __tablename__ = "target"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    night_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("night.id"))


async def test_native_types_through_the_pipeline(relay: tuple[LoopbackRelay, str]) -> None:
    """Uuid keys and foreign keys, Enum, Date, JSON, Numeric and a text key with spaces."""
    _proxy, url = relay
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(WorldBase.metadata.create_all)
    executor = TransactionExecutor(engine, ModelRegistry.from_base(WorldBase))
    try:
        txs = []
        ids = []
        for i in range(3):
            tx = TransactionBuilder("night")
            night_id = uuid.uuid4()
            ids.append(night_id)
            tx.create(
                Night,
                {
                    "id": night_id,
                    "date": dt.date(2026, 12, i + 1),
                    "mode": "SKY" if i % 2 else "DARK",
                    "meta": {"airmass": [1.2, 1.3], "ok": True},
                    "seeing": decimal.Decimal("0.85"),
                },
            )
            tx.create(Target, {"name": f"NGC 253, field {i}!", "night_id": night_id})
            txs.append(tx.build())
        change = TransactionBuilder("dark")
        change.update(Night, {"id": ids[0]}, {"mode": "DARK", "meta": {"note": "clouds"}})
        result = await executor.execute_batch([*txs, change.build()])
        assert all(o.applied for o in result.outcomes), [o.error for o in result.outcomes]
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(Night.mode, Night.meta, Night.seeing, Night.date).order_by(Night.date)
                )
            ).all()
            names = (await conn.execute(select(Target.name).order_by(Target.name))).scalars().all()
        assert [r.mode for r in rows] == [Mode.DARK, Mode.SKY, Mode.DARK]
        assert rows[0].meta == {"note": "clouds"} and rows[1].meta == {
            "airmass": [1.2, 1.3],
            "ok": True,
        }
        assert rows[1].seeing == decimal.Decimal("0.850") and rows[2].date == dt.date(2026, 12, 3)
        assert names == [f"NGC 253, field {i}!" for i in range(3)]
    finally:
        await engine.dispose()


def test_a_plain_outcome_is_the_outcome_the_dataclass_makes() -> None:
    import dataclasses

    import pytest

    from ccat_buffering.drain.outcome import Outcome, plain_outcome

    for applied in (False, True):
        made = plain_outcome("tx-1", applied)
        assert made == Outcome("tx-1", applied=applied)
        assert made.waiting is not applied and made.done is applied
        assert (
            made.generated == {} and made.generated is not plain_outcome("tx-2", applied).generated
        )
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.applied = not applied  # type: ignore[misc]


def test_a_batch_all_done_is_sorted_as_its_outcomes_say() -> None:
    from ccat_buffering.drain._batch_cycle import _Sorted
    from ccat_buffering.drain.outcome import Outcome, plain_outcome

    # Applied, and a repeat already applied: what all_done says of a batch.
    outcomes = [plain_outcome(f"t{i}", True) for i in range(3)]
    outcomes.append(Outcome("t1", already_applied=True))
    deliveries = [f"d{i}" for i in range(4)]
    fast = _Sorted(deliveries, outcomes, all_done=True)  # type: ignore[arg-type]
    assert vars(fast) == vars(_Sorted(deliveries, outcomes))  # type: ignore[arg-type]
    assert fast.done == deliveries  # type: ignore[comparison-overlap]
