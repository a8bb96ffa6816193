"""The ccat-buffering command: the simulation counts from the database and stores."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ccat_buffering.cli import app
from ccat_buffering.executor import BatchResult, Outcome, TransactionExecutor
from ccat_buffering.models import Transaction
from ccat_buffering.simulation import simulate


def test_simulate_json_reports_nothing_lost() -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--observations", "150", "--poison", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["transactions"] == 302
    assert summary["buffered"] == 302
    assert summary["committed"] == 300
    assert summary["replicated"] == 300
    assert summary["dead_lettered"] == 2
    assert summary["lost"] == 0
    assert summary["applied_twice"] == 0
    assert summary["visible_during_outage"] == summary["sampled"] > 0
    assert summary["outage_pauses"] > 0
    assert summary["attempts_during_outage"] == 0
    assert summary["caches_left"] == 0
    assert summary["seconds"] > 0


def test_simulate_table() -> None:
    result = CliRunner().invoke(app, ["simulate", "--observations", "20", "--poison", "0"])
    assert result.exit_code == 0, result.output
    assert "applied twice" in result.stdout and "ok" in result.stdout


async def test_simulation_counts_what_the_database_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A processor that acknowledges a transaction it never applied is caught as a loss.

    The dropped transaction starts an observation; the one finishing it then
    fails its foreign key and is dead-lettered, so both count as lost.
    """
    original = TransactionExecutor.execute_batch
    dropped: list[str] = []

    async def drop_first(self: TransactionExecutor, transactions: list[Transaction]) -> BatchResult:
        if dropped or not transactions:
            return await original(self, transactions)
        result = await original(self, transactions[1:])
        dropped.append(transactions[0].transaction_id)
        skipped = Outcome(transactions[0].transaction_id, applied=True)
        return BatchResult([skipped, *result.outcomes], result.commit_lsn)

    monkeypatch.setattr(TransactionExecutor, "execute_batch", drop_first)
    summary = await simulate(30, poison=0)
    assert dropped
    assert summary.lost == 2
    assert summary.committed == 58
    assert summary.dead_lettered == 1
    assert not summary.ok
