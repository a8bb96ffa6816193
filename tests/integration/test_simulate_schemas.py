"""simulate on the embedded default, on both example schemas."""

from __future__ import annotations

import pytest

from ccat_buffering.demo.simulation import simulate


@pytest.mark.parametrize("schema", ["text", "uuid"])
async def test_simulate_on_memory_and_sqlite(schema: str) -> None:
    summary = await simulate(40, poison=1, schema=schema)  # type: ignore[arg-type]
    assert summary.ok, summary
    assert (summary.lost, summary.applied_twice, summary.dead_lettered) == (0, 0, 1)
    assert summary.committed == 80 and summary.visible_during_outage == summary.sampled
