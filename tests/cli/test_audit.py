"""The audit log: every state-changing operator action is recorded, and shown."""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
from pathlib import Path

import pytest
from servers import free_port
from services import REDIS_URL, forget_site, redis_client
from typer.testing import CliRunner

import ccat_buffering.cli._operator as cli_operator
from ccat_buffering.buffer import audit
from ccat_buffering.cli import app
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.drain.database import create_engine
from ccat_buffering.observe.buffer_loss import BufferWatch
from ccat_buffering.observe.health import Health
from ccat_buffering.testing import new_site_name
from ccat_buffering_memory import MemoryBackend
from ccat_buffering_redis import RedisBackend

from support import FakeClock

ME = f"os:{getpass.getuser()}@{socket.gethostname()}"


async def _dead_letters(backend: RedisBackend | MemoryBackend, count: int) -> None:
    await backend.buffer.push([f"junk {n}" for n in range(count)])
    for claim in await backend.buffer.claim(count, 600):
        assert await backend.buffer.dead_letter(claim.receipt, "junk", None)


async def test_record_keeps_who_what_how_many_when_masked_and_capped() -> None:
    clock = FakeClock(1_800_000_000.0)
    backend = MemoryBackend(new_site_name())
    entry = await audit.record(
        backend,
        action="dlq.purge",
        count=3,
        detail="from redis://ops:hunter2@10.0.0.1:6379/0",
        clock=clock,
    )
    assert (entry.principal, entry.action, entry.count, entry.at) == (
        ME,
        "dlq.purge",
        3,
        1_800_000_000.0,
    )
    assert "hunter2" not in entry.detail and "ops:***@" in entry.detail
    assert entry.when == "2027-01-15T08:00:00Z"
    for n in range(4):
        await audit.record(backend, action="console.retry", count=n, principal="http:ana", keep=3)
    entries = await audit.list(backend)
    assert [(e.action, e.count, e.principal) for e in entries] == [
        ("console.retry", n, "http:ana") for n in (3, 2, 1)
    ]
    assert await audit.list(backend, 1) == entries[:1]
    with pytest.raises(ValueError, match="action"):
        await audit.record(backend, action=" ", count=1)
    with pytest.raises(ValueError, match="count"):
        await audit.record(backend, action="x", count=-1)


async def test_an_unreadable_entry_shows_as_such() -> None:
    backend = MemoryBackend(new_site_name())
    await backend.append_audit("not json", 10)
    (entry,) = await audit.list(backend)
    assert (entry.action, entry.detail) == ("unreadable", "not json")


async def test_replay_purge_and_the_log_on_redis_while_the_database_is_down() -> None:
    """``dlq replay`` and ``purge`` are recorded in Redis; ``audit`` and ``status`` show them.

    The main database's URL names a port nothing listens on: the log does not need it.
    """
    probe = await redis_client()
    site = new_site_name()
    backend = RedisBackend(probe, site=site)  # type: ignore[arg-type]
    env = {
        "CCAT_BUFFERING_SITE_NAME": site,
        "CCAT_BUFFERING_BACKEND_URL": REDIS_URL,
        "CCAT_BUFFERING_DATABASE_URL": (
            f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/down"
        ),
    }

    def run(*args: str) -> object:
        return CliRunner().invoke(app, list(args), env=env)

    try:
        await _dead_letters(backend, 3)
        letters = [letter.letter_id for letter in await backend.dead_letters.list()]
        result = await asyncio.to_thread(run, "dlq", "replay", letters[0], "--yes")
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        result = await asyncio.to_thread(run, "dlq", "purge", "--all", "--yes")
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        result = await asyncio.to_thread(run, "audit", "--json")
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        shown = json.loads(result.stdout)  # type: ignore[attr-defined]
        assert [(e["action"], e["count"], e["principal"]) for e in shown] == [
            ("dlq.purge", 2, ME),
            ("dlq.replay", 1, ME),
        ]
        assert shown[0]["detail"] == "--all"
        assert letters[0] in shown[1]["detail"]
        assert shown[0]["when"].endswith("Z")
        table = await asyncio.to_thread(run, "audit")
        assert "2 audit entries" in table.stdout and "dlq.replay" in table.stdout  # type: ignore[attr-defined]
        result = await asyncio.to_thread(run, "status", "--json")
        health = Health.model_validate_json(result.stdout)  # type: ignore[attr-defined]
        assert [a.action for a in health.actions] == ["dlq.purge", "dlq.replay"]
        assert await probe.type(backend.keys.audit) == b"list"  # type: ignore[attr-defined]
        assert await backend.audit_keys() == []  # bounded: not a leak
    finally:
        await forget_site(probe, backend.keys.pattern())
        await probe.aclose()  # type: ignore[attr-defined]


async def test_acknowledge_loss_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = BufferingSettings(
        site_name=new_site_name(), database_url=f"sqlite+aiosqlite:///{tmp_path}/main.db"
    )
    engine = create_engine(settings.require_url("database_url"))
    backend = MemoryBackend(settings.site_name)
    site = cli_operator.OperatorSite(settings, backend, None, engine)
    assert isinstance(site.watch, BufferWatch)
    monkeypatch.setattr(cli_operator, "open_site", lambda *a, **k: site)
    monkeypatch.setenv("CCAT_BUFFERING_SITE_NAME", settings.site_name)
    result = await asyncio.to_thread(CliRunner().invoke, app, ["status", "--acknowledge-loss"])
    assert "acknowledged 0 loss(es)" in result.stderr, result.output
    assert "status.acknowledge-loss" in result.stdout  # status shows the latest actions
    (entry,) = await audit.list(backend)
    assert (entry.action, entry.count, entry.principal) == ("status.acknowledge-loss", 0, ME)
