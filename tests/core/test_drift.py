"""The rule that tells schema drift from bad data, on the errors SQLite really raises."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text

from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.drain._drift import schema_drift
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.processor import ProcessorState
from ccat_buffering.write.registry import ModelRegistry

from support import memory_sqlite_site, observation

REGISTRY = ModelRegistry.from_base(Base)
UNIT = {
    "id": "u1",
    "obs_unit_id": 1,
    "status": "running",
    "start_time": dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
}


async def _error_of(
    tmp_path: Path, values: dict[str, Any], site: str = "site TEXT NOT NULL"
) -> BaseException:
    """What inserting ``values`` into executed_obs_unit with an unmapped ``site`` raises."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'drift.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE executed_obs_unit (id VARCHAR(36) PRIMARY KEY, "
                    "obs_unit_id INTEGER NOT NULL, status VARCHAR(32) NOT NULL, "
                    "start_time DATETIME NOT NULL, end_time DATETIME, mean_pwv NUMERIC, "
                    f"{site}, CHECK (obs_unit_id <> 13))"
                )
            )
        with pytest.raises(Exception) as raised:
            async with engine.begin() as conn:
                await conn.execute(insert(ExecutedObsUnit).values(**values))
        return raised.value
    finally:
        await engine.dispose()


async def test_a_required_column_the_mapping_does_not_know_is_drift(tmp_path: Path) -> None:
    drift = schema_drift(await _error_of(tmp_path, UNIT), REGISTRY)
    assert drift is not None
    assert (drift.table, drift.column, drift.mapped) == ("executed_obs_unit", "site", False)
    message = str(drift.error("the database's message"))
    assert "executed_obs_unit.site" in message and "resumes by itself" in message


async def test_a_null_the_mapping_itself_forbids_is_bad_data(tmp_path: Path) -> None:
    error = await _error_of(tmp_path, {**UNIT, "status": None}, site="site TEXT")
    assert "NOT NULL constraint failed: executed_obs_unit.status" in str(error)
    assert schema_drift(error, REGISTRY) is None


async def test_a_check_constraint_is_bad_data(tmp_path: Path) -> None:
    error = await _error_of(tmp_path, {**UNIT, "obs_unit_id": 13}, site="site TEXT")
    assert "CHECK constraint failed" in str(error)
    assert schema_drift(error, REGISTRY) is None


async def test_a_not_null_column_the_mapping_calls_nullable_is_drift(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'nullable.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE executed_obs_unit (id VARCHAR(36) PRIMARY KEY, "
                    "obs_unit_id INTEGER, status VARCHAR(32), start_time DATETIME, "
                    "end_time DATETIME NOT NULL, mean_pwv NUMERIC)"
                )
            )
        with pytest.raises(Exception) as raised:
            async with engine.begin() as conn:
                await conn.execute(insert(ExecutedObsUnit).values(**UNIT))
    finally:
        await engine.dispose()
    drift = schema_drift(raised.value, REGISTRY)
    assert drift is not None and (drift.column, drift.mapped) == ("end_time", True)


async def test_drift_on_sqlite_pauses_the_queue_and_dead_letters_nothing(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        async with site.engine.begin() as conn:
            await conn.execute(text("DROP TABLE raw_data_package"))
            await conn.execute(
                text(
                    "CREATE TABLE raw_data_package (id VARCHAR(36) PRIMARY KEY, "
                    "executed_obs_unit_id VARCHAR(36) REFERENCES executed_obs_unit (id), "
                    "name VARCHAR(128) UNIQUE, shipped_by TEXT NOT NULL)"
                )
            )
        txs = [observation(i)[0] for i in range(10)]
        await site.manager.buffer_many(txs)
        for _ in range(5):  # more cycles than max_attempts, each past any retry hold
            assert await site.processor.run_once() == 0
            site.clock.advance(11)
        health = await site.processor.health()
        assert health.state is ProcessorState.PAUSED
        assert health.cause is not None and "raw_data_package.shipped_by" in health.cause
        assert health.dead_letters == 0
        statuses = await site.backend.status.get_many([t.transaction_id for t in txs])
        assert all(s is not None and s.attempts == 0 for s in statuses)
