"""Seeing and resolving conflicts: status, the conflicts commands, the metric (real Redis)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from services import require_redis
from typer.testing import CliRunner
from writers import REDIS, Note, Parties, parties

from ccat_buffering.cli import app
from ccat_buffering.web.metrics import SiteMetrics
from ccat_buffering.write.models import TransactionState

from support import sqlite_url


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _env(monkeypatch: pytest.MonkeyPatch, p: Parties) -> None:
    settings = p.a.settings
    monkeypatch.setenv("CCAT_BUFFERING_SITE_NAME", settings.site_name)
    monkeypatch.setenv("CCAT_BUFFERING_BACKEND_URL", settings.backend_url)
    monkeypatch.setenv("CCAT_BUFFERING_DATABASE_URL", settings.database_url or "")


async def _conflicted(p: Parties) -> tuple[uuid.UUID, str]:
    key = uuid.uuid4()
    await p.write(p.main, lambda tx: tx.create(Note, {"id": key, "title": "t", "status": "new"}))
    mine = await p.write(p.a, lambda tx: tx.update(Note, key, {"status": "a"}))
    await p.write(p.main, lambda tx: tx.update(Note, key, {"status": "main"}))
    await p.drain(p.a)
    return key, mine.transaction_id


@pytest.mark.parametrize("keep", ["mine", "theirs"])
async def test_status_list_show_resolve_and_the_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: str
) -> None:
    await require_redis()
    async with parties(sqlite_url(tmp_path), backend=REDIS) as p:
        metrics = SiteMetrics(p.a)
        key, tx_id = await _conflicted(p)
        _env(monkeypatch, p)
        sample = metrics.registry.get_sample_value(
            "ccat_buffering_conflicts_total",
            {
                "site": p.a.settings.site_name,
                "model": "Note",
                "kind": "update_origin_differs",
                "outcome": "rejected",
            },
        )
        assert sample == 1.0

        status = await asyncio.to_thread(_run, "status", "--json")
        assert status.exit_code == 1, status.output
        health = json.loads(status.stdout)
        assert health["conflicts"] == 1
        assert any("1 unresolved conflict" in w for w in health["warnings"])

        listed = await asyncio.to_thread(_run, "conflicts", "list", "--json")
        assert listed.exit_code == 1, listed.output
        [record] = json.loads(listed.stdout)
        assert record["transaction_id"] == tx_id and record["unresolved"]
        assert (record["base"], record["mine"], record["theirs"]) == (
            {"status": "new"},
            {"status": "a"},
            {"status": "main"},
        )
        shown = await asyncio.to_thread(_run, "conflicts", "show", str(record["id"]))
        assert shown.exit_code == 0, shown.output
        assert "update_origin_differs" in shown.stdout and "'main'" in shown.stdout
        missing = await asyncio.to_thread(_run, "conflicts", "show", "999999")
        assert missing.exit_code == 1

        resolved = await asyncio.to_thread(
            _run,
            "conflicts",
            "resolve",
            str(record["id"]),
            "--keep",
            keep,
            "--models",
            "writers:Base",
            "--json",
        )
        assert resolved.exit_code == 0, resolved.output
        assert json.loads(resolved.stdout)["keep"] == keep
        assert (await p.row(Note, key)).status == ("a" if keep == "mine" else "main")
        after = await p.a.status(tx_id)
        assert after is not None
        assert after.state is (
            TransactionState.COMMITTED if keep == "mine" else TransactionState.FAILED
        )
        again = await asyncio.to_thread(
            _run,
            "conflicts",
            "resolve",
            str(record["id"]),
            "--keep",
            keep,
            "--models",
            "writers:Base",
        )
        assert again.exit_code == 1 and "not waiting for a resolution" in again.output
        listed = await asyncio.to_thread(_run, "conflicts", "list", "--all", "--json")
        assert listed.exit_code == 0
        assert json.loads(listed.stdout)[0]["outcome"] == f"resolved_{keep}"
        status = await asyncio.to_thread(_run, "status", "--json")
        assert json.loads(status.stdout)["conflicts"] == 0
