"""``inspect`` tells the story: every attempt, failure, outage pause and replay, from the buffer
alone, also while the main database is down or hung."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from servers import free_port
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

import ccat_buffering.cli._inspection as inspection
import ccat_buffering.cli._operator as cli_operator
from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.cli import app
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.drain.database import create_engine
from ccat_buffering.write.models import TransactionState
from ccat_buffering_redis import RedisBackend

from support import Site, memory_sqlite_site, observation


async def _a_hard_life(site: Site) -> str:
    """A transaction that fails, waits out an outage, is dead-lettered, replayed, committed."""
    tx, _ = observation(1)
    await site.manager.buffer(tx)
    (d,) = await site.manager.claim(1, 60)
    await site.manager.failed([(d, ValueError("bad data"), FailureKind.DATA)])
    site.clock.advance(3600)
    (d,) = await site.manager.claim(1, 60)
    await site.manager.paused([d], "database unreachable")
    (d,) = await site.manager.claim(1, 60)
    await site.manager.failed([(d, ValueError("never"), FailureKind.PERMANENT)])
    assert await site.manager.replay([tx.transaction_id]) == [tx.transaction_id]
    assert await site.processor.run_once() == 1
    return tx.transaction_id


async def test_the_history_keeps_every_step_and_commit_clears_the_error(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        tx_id = await _a_hard_life(site)
        status = await site.manager.status(tx_id)
        assert status is not None and status.state is TransactionState.COMMITTED
        assert status.last_error is None
        assert [e.event for e in status.history] == [
            "buffered",
            "retrying",
            "outage pause",
            "failed",
            "replayed",
            "committed",
        ]
        notes = {e.event: e.note for e in status.history}
        assert notes["retrying"] and "bad data" in notes["retrying"]
        assert notes["outage pause"] == "database unreachable"
        assert notes["replayed"] and "never" in notes["replayed"]
        times = [e.at for e in status.history[1:]]  # the site's (fake) clock after creation
        assert times == sorted(times)


def _inspect(tx_id: str) -> object:
    return CliRunner().invoke(app, ["inspect", tx_id, "--json"])


@pytest.mark.parametrize("how", ["down", "hung"])
async def test_inspect_answers_from_the_buffer_while_the_database_is_down_or_hung(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: aioredis.Redis, how: str
) -> None:
    from services import POSTGRES_URL, REDIS_URL

    async with memory_sqlite_site(tmp_path) as site:
        tx_id = await _a_hard_life(site)
        # The same status in a Redis buffer: the store whose loss check asks the database.
        backend = RedisBackend(redis_client, site=site.backend.site)
        status = await site.manager.status(tx_id)
        assert status is not None
        await backend.status.put(status, 3600)
        relay = None
        if how == "down":
            url = make_url(POSTGRES_URL).set(host="127.0.0.1", port=free_port())
        else:
            target = make_url(POSTGRES_URL)
            relay = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432)
            await relay.start()
            relay.hang()
            url = target.set(host="127.0.0.1", port=relay.port)
        database = url.render_as_string(hide_password=False)
        settings = BufferingSettings(
            site_name=site.backend.site, database_url=database, connect_timeout=30
        )
        # Its own client: the command runs its own event loop.
        fresh = RedisBackend.from_url(REDIS_URL, site=site.backend.site)
        operator_site = cli_operator.OperatorSite(settings, fresh, None, create_engine(database))
        monkeypatch.setattr(cli_operator, "open_site", lambda *a, **k: operator_site)
        monkeypatch.setattr(inspection, "LOSS_CHECK_TIMEOUT", 1.0)
        monkeypatch.setenv("CCAT_BUFFERING_SITE_NAME", site.backend.site)
        try:
            result = await asyncio.wait_for(asyncio.to_thread(_inspect, tx_id), timeout=30)
        finally:
            if relay is not None:
                await relay.stop()
            keys = [
                k async for k in redis_client.scan_iter(match=backend.keys.pattern(), count=1000)
            ]
            if keys:
                await redis_client.delete(*keys)
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        found = json.loads(result.stdout)  # type: ignore[attr-defined]
        assert found["status"]["state"] == "committed"
        assert [h["event"] for h in found["history"]][-3:] == [
            "failed",
            "replayed",
            "committed",
        ]
        (note,) = found["unchecked"]
        assert note.startswith("buffer-loss check skipped: the main database could not be asked")
        if how == "hung":
            assert "not answering" in note
        assert "Traceback" not in result.output  # type: ignore[attr-defined]


async def test_a_long_outage_folds_into_one_event_and_a_routine_life_keeps_none(
    tmp_path: Path,
) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        calm, _ = observation(1)
        stormy, _ = observation(2)
        await site.manager.buffer_many([calm, stormy])
        assert await site.processor.run_once() == 2
        status = await site.manager.status(calm.transaction_id)
        assert status is not None and status.history == ()  # its times tell the story
        other, _ = observation(3)
        await site.manager.buffer(other)
        for _ in range(500):
            (d,) = await site.manager.claim(1, 60)
            await site.manager.paused([d], "database unreachable")
        status = await site.manager.status(other.transaction_id)
        assert status is not None
        assert [(e.event, e.times) for e in status.history] == [
            ("buffered", 1),
            ("outage pause", 500),
        ]
