"""The operator's commands on a prepared site: status, inspect, dlq, metrics, masking."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

import pytest
import pytest_asyncio
from servers import free_port
from sqlalchemy import func, select
from typer.testing import CliRunner

import ccat_buffering.cli._operator as cli_operator
from ccat_buffering.cli import app
from ccat_buffering.coordinator import BufferingCoordinator
from ccat_buffering.database import create_engine
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.executor import TransactionExecutor
from ccat_buffering.health import Health
from ccat_buffering.models import TransactionState
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.retry import FailureKind
from ccat_buffering.settings import BufferingSettings
from ccat_buffering.testing import new_site_name
from ccat_buffering_memory import MemoryBackend

from support import make_schema, observation, worker_env

SECRET = "s3cret-pw"


@pytest_asyncio.fixture
async def prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[BufferingCoordinator]:
    """A site with 3 waiting, 1 in flight and 3 dead letters (the first unreadable)."""
    db = tmp_path / "main.db"
    settings = BufferingSettings(
        site_name=new_site_name(),
        database_url=f"sqlite+aiosqlite:///{db}",
        backend_url=f"memory://ops:{SECRET}@nowhere",
    )
    site = await _memory_coordinator(settings)
    await site.backend.buffer.push(["{not a transaction"])
    txs = [observation(i)[0] for i in range(6)]
    await site.manager.buffer_many(txs)
    assert await site.manager.claim(1, 600) == []  # the junk, dead-lettered on sight
    deliveries = await site.manager.claim(2, 600)
    await site.manager.failed(
        [(d, ValueError(f"bad {i}"), FailureKind.PERMANENT) for i, d in enumerate(deliveries)]
    )
    await site.manager.claim(1, 600)  # one in flight
    monkeypatch.setattr(cli_operator, "open_site", lambda *a, **k: site)
    monkeypatch.setenv("CCAT_BUFFERING_SITE_NAME", settings.site_name)
    site.txs = txs  # type: ignore[attr-defined]
    yield site
    await site.engine.dispose()


def _run(*args: str, input: str | None = None) -> object:
    return CliRunner().invoke(app, list(args), input=input)


async def _memory_coordinator(settings: BufferingSettings) -> BufferingCoordinator:
    """A site on the memory backend over ``settings.database_url``, schema and ledger made."""
    engine = create_engine(settings.require_url("database_url"))
    await make_schema(engine)
    registry = ModelRegistry.from_base(Base)
    await TransactionExecutor(engine, registry).create_ledger()
    return BufferingCoordinator(
        settings, MemoryBackend(settings.site_name), engine, registry, start=False
    )


async def test_status_json_matches_the_stores(prepared: BufferingCoordinator) -> None:
    result = await asyncio.to_thread(_run, "status", "--json")
    assert result.exit_code == 1, result.output  # dead letters: attention needed
    data = json.loads(result.stdout)
    health = Health.model_validate(data)
    stats = await prepared.backend.buffer.stats()
    assert (
        (health.buffer.depth, health.buffer.in_flight, health.buffer.dead_letters)
        == (
            stats.depth,
            stats.in_flight,
            stats.dead_letters,
        )
        == (3, 1, 3)
    )
    counts = await prepared.backend.status.counts()
    assert health.states == {str(k): v for k, v in counts.items()}
    assert any("dead-letter" in w for w in health.warnings)
    assert data["healthy"] is False
    assert SECRET not in result.stdout and "***" in health.backend


async def test_status_table_and_a_healthy_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = BufferingSettings(
        site_name=new_site_name(), database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db"
    )
    engine = create_engine(settings.database_url)
    site = BufferingCoordinator(
        settings,
        MemoryBackend(settings.site_name),
        engine,
        ModelRegistry.from_base(Base),
        start=False,
    )
    monkeypatch.setattr(cli_operator, "open_site", lambda *a, **k: site)
    monkeypatch.setenv("CCAT_BUFFERING_SITE_NAME", settings.site_name)
    result = await asyncio.to_thread(_run, "status")
    assert result.exit_code == 0, result.output
    assert "queue depth" in result.stdout and "healthy" in result.stdout
    await engine.dispose()


async def test_inspect_shows_status_payload_and_keys(prepared: BufferingCoordinator) -> None:
    waiting = prepared.txs[5]  # type: ignore[attr-defined]
    result = await asyncio.to_thread(_run, "inspect", waiting.transaction_id, "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["status"]["state"] == "buffered"
    assert found["payload"]["transaction_id"] == waiting.transaction_id
    kinds = sorted(k["kind"] for k in found["keys"])
    assert kinds == ["id", "id", "record", "record", "status"]
    assert all(k["ttl_seconds"] is None for k in found["keys"] if k["kind"] == "status")
    dead = prepared.txs[0]  # type: ignore[attr-defined]
    result = await asyncio.to_thread(_run, "inspect", dead.transaction_id)
    assert result.exit_code == 0 and "bad 0" in result.stdout
    result = await asyncio.to_thread(_run, "inspect", "00000000-0000-0000-0000-000000000000")
    assert result.exit_code == 1


async def test_dlq_list_show_replay_in_order_and_purge(prepared: BufferingCoordinator) -> None:
    result = await asyncio.to_thread(_run, "dlq", "list", "--json")
    letters = json.loads(result.stdout)
    first, second = (tx.transaction_id for tx in prepared.txs[:2])  # type: ignore[attr-defined]
    assert letters[0]["letter_id"].startswith("raw-")
    assert [letter["letter_id"] for letter in letters][1:] == [first, second]
    shown = await asyncio.to_thread(_run, "dlq", "show", first)
    assert shown.exit_code == 0 and "bad 0" in shown.stdout and first in shown.stdout
    refused = await asyncio.to_thread(_run, "dlq", "replay", "--all", input="n\n")
    assert refused.exit_code != 0
    assert (await prepared.backend.buffer.stats()).dead_letters == 3
    purged = await asyncio.to_thread(_run, "dlq", "purge", letters[0]["letter_id"], "--yes")
    assert purged.exit_code == 0 and "purged 1" in purged.stdout
    replayed = await asyncio.to_thread(_run, "dlq", "replay", "--all", "--yes")
    assert replayed.exit_code == 0 and "replayed 2" in replayed.stdout
    assert (await prepared.backend.buffer.stats()).dead_letters == 0
    await prepared.backend.buffer.recover(include_unexpired=True)
    while await prepared.processor.run_once():
        pass
    statuses = await prepared.backend.status.get_many([tx.transaction_id for tx in prepared.txs])  # type: ignore[attr-defined]
    assert all(s is not None and s.state is TransactionState.COMMITTED for s in statuses)
    async with prepared.engine.connect() as conn:
        assert (await conn.execute(select(func.count(ExecutedObsUnit.id)))).scalar() == 6


async def test_dlq_replay_dry_run_reports_each_letter_and_changes_nothing(
    prepared: BufferingCoordinator,
) -> None:
    first, second = (tx.transaction_id for tx in prepared.txs[:2])  # type: ignore[attr-defined]
    models = "ccat_buffering.demo.example:Base"
    database = ("--database-url", prepared.settings.require_url("database_url"))
    result = await asyncio.to_thread(
        _run, *database, "dlq", "replay", "--all", "--dry-run", "--models", models, "--json"
    )
    assert result.exit_code == 1, result.output  # the unreadable letter would fail
    reports = json.loads(result.stdout)["dry_run"]
    assert [(r["letter_id"], r["outcome"]) for r in reports] == [
        (first, "applies"),
        (second, "applies"),
        (reports[2]["letter_id"], "fails"),
    ]
    assert reports[2]["letter_id"].startswith("raw-") and "unreadable" in reports[2]["error"]
    async with prepared.engine.connect() as conn:
        assert (await conn.execute(select(func.count(ExecutedObsUnit.id)))).scalar() == 0
    assert (await prepared.backend.buffer.stats()).dead_letters == 3
    only = await asyncio.to_thread(
        _run, *database, "dlq", "replay", second, "--dry-run", "--models", models
    )
    assert only.exit_code == 0, only.output
    assert "1 letter(s) in replay order, 0 would fail" in only.stdout and second in only.stdout


async def test_keys_audit_on_a_backend_without_keys(prepared: BufferingCoordinator) -> None:
    result = await asyncio.to_thread(_run, "keys", "audit")
    assert result.exit_code == 0 and "no keys to audit" in result.stdout


def test_status_watch_refreshes_and_exits_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    import pty

    env = {
        **os.environ,
        "CCAT_BUFFERING_SITE_NAME": new_site_name(),
        "CCAT_BUFFERING_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/w.db",
        "COLUMNS": "100",
    }
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ccat_buffering",
            "status",
            "--watch",
            "--interval",
            "0.5",
            "--no-audit",
        ],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        close_fds=True,
    )
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while seen.count(b"queue depth") < 2 and time.monotonic() < deadline:
            try:
                seen += os.read(primary, 65536)
            except OSError:
                break
        assert seen.count(b"queue depth") >= 2, seen[-2000:]
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(primary)
    assert b"Traceback" not in seen


async def test_metrics_after_a_known_scenario(tmp_path: Path) -> None:
    from prometheus_client import start_http_server

    from ccat_buffering.metrics import SiteMetrics

    settings = BufferingSettings(
        site_name=new_site_name(), database_url=f"sqlite+aiosqlite:///{tmp_path}/m.db"
    )
    site = await _memory_coordinator(settings)
    metrics = SiteMetrics(site)
    await site.manager.buffer_many([observation(i)[0] for i in range(5)])
    # A duplicate name: a conflict (insert_exists), rejected, not a dead letter.
    await site.manager.buffer(observation(99, name="pkg-1")[0])
    site.manager.retry_policy = type(site.manager.retry_policy)(max_attempts=1)
    while await site.processor.run_once():
        pass
    await site.tracker.poll_once()
    await metrics.refresh()
    port = free_port()
    start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    body = await asyncio.to_thread(
        lambda: (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
    )
    label = f'{{site="{settings.site_name}"}}'
    assert f"ccat_buffering_buffered_total{label} 6.0" in body
    assert f"ccat_buffering_committed_total{label} 5.0" in body
    assert f"ccat_buffering_replicated_total{label} 5.0" in body
    # The series exists from the start (an alert has something to evaluate), at 0.
    assert f"ccat_buffering_dead_lettered_total{label} 0.0" in body
    assert (
        "ccat_buffering_conflicts_total{"
        f'kind="insert_exists",model="RawDataPackage",outcome="rejected",site="{settings.site_name}"'
        "} 1.0"
    ) in body
    assert f"ccat_buffering_queue_depth{label} 0.0" in body
    assert f"ccat_buffering_time_to_visible_seconds_count{label} 5.0" in body
    await site.engine.dispose()


async def test_passwords_never_show(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = BufferingSettings(
        site_name=new_site_name(),
        backend_url=f"memory://ops:{SECRET}@buffer",
        database_url=f"postgresql+asyncpg://ops:{SECRET}@127.0.0.1:1/ops",
        replica_url=f"postgresql+asyncpg://ops:{SECRET}@127.0.0.1:1/replica",
    )
    caplog.set_level(logging.INFO, logger="ccat_buffering")
    async with BufferingCoordinator.from_settings(
        settings, registry=ModelRegistry.from_base(Base), start=False
    ) as site:
        await site.submit(observation(1)[0])
        await site.processor.run_once()  # the database is unreachable: a pause, logged
        health = await site.health()
        status = await site.status((await site.backend.status.ids(TransactionState.BUFFERED))[0])
    shown = [
        health.model_dump_json(),
        str(settings.masked()),
        status.model_dump_json() if status else "",
        caplog.text,
        json.dumps(site.describe()),
    ]
    assert "database unreachable" in health.model_dump_json()
    for text in shown:
        assert SECRET not in text
    assert "***" in health.database and "***" in (health.replica or "")


async def test_commands_on_a_real_redis_site(tmp_path: Path) -> None:
    from services import REDIS_URL, forget_site, redis_client

    from ccat_buffering_redis import RedisBackend

    probe = await redis_client()
    site_name = new_site_name()
    db_url = f"sqlite+aiosqlite:///{tmp_path}/r.db"
    engine = create_engine(db_url)
    await make_schema(engine)
    backend = RedisBackend(probe, site=site_name)
    settings = BufferingSettings(site_name=site_name, database_url=db_url, backend_url=REDIS_URL)
    site = BufferingCoordinator(
        settings, backend, engine, ModelRegistry.from_base(Base), start=False
    )
    txs = [observation(i)[0] for i in range(3)]
    await site.manager.buffer_many(txs)
    (delivery,) = await site.manager.claim(1, 600)
    await site.manager.failed([(delivery, ValueError("bad"), FailureKind.PERMANENT)])
    env = {
        "CCAT_BUFFERING_SITE_NAME": site_name,
        "CCAT_BUFFERING_BACKEND_URL": REDIS_URL,
        "CCAT_BUFFERING_DATABASE_URL": db_url,
    }
    try:
        result = await asyncio.to_thread(CliRunner().invoke, app, ["status", "--json"], env=env)
        health = Health.model_validate_json(result.stdout)
        assert result.exit_code == 1
        assert (health.buffer.depth, health.buffer.dead_letters) == (2, 1)
        appendonly = (await probe.config_get("appendonly"))["appendonly"]
        assert any("appendonly no" in w for w in health.warnings) == (appendonly == "no")
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["inspect", txs[2].transaction_id, "--json"], env=env
        )
        found = json.loads(result.stdout)
        assert found["payload"]["transaction_id"] == txs[2].transaction_id
        shown = {k["key"].split(":")[2] for k in found["keys"]}
        # Created by its records' first transaction: no ID-cache key (issue 23).
        assert shown == {"transaction", "buffered"}, found["keys"]
        assert {k["kind"] for k in found["keys"]} == {"string"}
        result = await asyncio.to_thread(CliRunner().invoke, app, ["keys", "audit"], env=env)
        assert result.exit_code == 0 and "0 key(s) without a TTL" in result.stdout
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["dlq", "replay", "--all", "--yes"], env=env
        )
        assert result.exit_code == 0 and "replayed 1" in result.stdout
        claimed = await site.manager.claim(10, 60)
        assert [d.transaction_id for d in claimed] == [
            txs[0].transaction_id,  # the replayed one, back at the head
            txs[1].transaction_id,
            txs[2].transaction_id,
        ]
    finally:
        await forget_site(probe, backend.keys.pattern())
        await probe.aclose()
        await engine.dispose()


# --- JSON of every command, ISO times, watch in a pipe, the worker's lines, a gone worker ---


async def test_every_dlq_command_prints_json(prepared: BufferingCoordinator) -> None:
    listed = json.loads((await asyncio.to_thread(_run, "dlq", "list", "--json")).stdout)
    for letter in listed:
        assert dt.datetime.fromisoformat(letter["dead_lettered_at"]).tzinfo == dt.UTC
        assert letter["dead_lettered_at"].endswith("Z")
    first = listed[1]["letter_id"]
    shown = await asyncio.to_thread(_run, "dlq", "show", first, "--json")
    letter = json.loads(shown.stdout)
    assert letter["letter_id"] == first and letter["payload"]["transaction_id"] == first
    missing = await asyncio.to_thread(_run, "dlq", "show", "nope", "--json")
    assert missing.exit_code == 1
    assert json.loads(missing.stdout)["error"]["message"].startswith("no dead letter nope")
    replayed = await asyncio.to_thread(
        _run, "dlq", "replay", first, "unknown-id", "--yes", "--json"
    )
    assert replayed.exit_code == 1  # a named letter was not found
    assert json.loads(replayed.stdout) == {"replayed": [first], "not_found": ["unknown-id"]}
    purged = await asyncio.to_thread(_run, "dlq", "purge", "--all", "--yes", "--json")
    assert purged.exit_code == 0 and json.loads(purged.stdout) == {"purged": 2}
    audit = await asyncio.to_thread(_run, "keys", "audit", "--json")
    assert audit.exit_code == 0 and json.loads(audit.stdout) == []


async def test_replay_names_an_unknown_id(prepared: BufferingCoordinator) -> None:
    result = await asyncio.to_thread(_run, "dlq", "replay", "no-such-letter", "--yes")
    assert result.exit_code == 1
    assert "no dead letter no-such-letter at site" in result.output


async def test_inspect_json_times_are_iso_utc(prepared: BufferingCoordinator) -> None:
    dead = prepared.txs[0]  # type: ignore[attr-defined]
    found = json.loads(
        (await asyncio.to_thread(_run, "inspect", dead.transaction_id, "--json")).stdout
    )
    times = [h["at"] for h in found["history"]] + [found["dead_letter"]["dead_lettered_at"]]
    assert all(t.endswith("Z") and dt.datetime.fromisoformat(t).tzinfo == dt.UTC for t in times)


async def test_ids_are_never_cut_at_80_columns(prepared: BufferingCoordinator) -> None:
    def run80(*args: str) -> str:
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "80"}).stdout

    listed = await asyncio.to_thread(run80, "dlq", "list")
    for tx in prepared.txs[:2]:  # type: ignore[attr-defined]
        assert tx.transaction_id in listed, listed
    waiting = prepared.txs[5]  # type: ignore[attr-defined]
    shown = await asyncio.to_thread(run80, "inspect", waiting.transaction_id)
    assert f"transaction {waiting.transaction_id}" in shown
    assert f"transaction:{waiting.transaction_id}" in shown.replace("\n", ""), shown


def _watch(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CCAT_BUFFERING_")},
        "CCAT_BUFFERING_SITE_NAME": new_site_name(),
    }
    argv = [sys.executable, "-m", "ccat_buffering", "status", "--watch", "--interval", "0.5"]
    process = subprocess.Popen(
        [*argv, "--no-audit", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    return process, env


def _read_until(stream: IO[bytes], done: Callable[[list[str]], bool]) -> list[str]:
    """Lines of ``stream`` until ``done(lines)``, the end, or 30 s (read in a thread)."""
    lines: list[str] = []
    finished = threading.Event()

    def read() -> None:
        for raw in iter(stream.readline, b""):
            lines.append(raw.decode())
            if done(lines):
                break
        finished.set()

    threading.Thread(target=read, daemon=True).start()
    finished.wait(30)
    return list(lines)


def _lines_until(process: subprocess.Popen[bytes], wanted: str, count: int) -> list[str]:
    assert process.stdout is not None
    return _read_until(process.stdout, lambda ls: sum(wanted in line for line in ls) >= count)


def test_watch_json_is_ndjson_in_a_pipe(tmp_path: Path) -> None:
    process, _ = _watch(tmp_path, "--json")
    try:
        lines = _lines_until(process, '"healthy"', 2)
        documents = [json.loads(line) for line in lines]
        assert len(documents) >= 2 and all("buffer" in d for d in documents)
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_watch_refreshes_in_a_pipe(tmp_path: Path) -> None:
    process, _ = _watch(tmp_path)
    try:
        lines = _lines_until(process, "queue depth", 2)
        assert sum("queue depth" in line for line in lines) >= 2, lines
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, err = process.communicate()
    assert b"Traceback" not in err


def test_the_worker_says_what_it_does_without_verbose(tmp_path: Path) -> None:
    # Nothing listens there: the worker must still say at once what it does.
    env = worker_env(
        new_site_name(), f"postgresql+asyncpg://ops:{SECRET}@127.0.0.1:{free_port()}/ops"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "ccat_buffering", "worker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    assert process.stderr is not None
    try:
        seen = _read_until(process.stderr, lambda ls: any("] running" in line for line in ls))
        assert any("] running" in line for line in seen), seen
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        rest = process.communicate()[1].decode()
    text = "".join(seen) + rest
    start = next(line for line in seen if "starting:" in line)
    assert " INFO " in start and "batch 100" in start and "processor lease 15 s" in start
    assert "***" in start and SECRET not in text
    assert "lease held by nobody" in start
    assert "INFO ccat_buffering.worker" in text and "] running" in text
    assert "worker stopped" in rest


async def test_a_killed_worker_shows_as_gone() -> None:
    from ccat_buffering.cli._operator import OperatorSite
    from ccat_buffering.processor import ProcessorHealth, ProcessorState

    settings = BufferingSettings(site_name=new_site_name())
    backend = MemoryBackend(settings.site_name)
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    holder = f"{socket.gethostname()}-{child.pid}-0a1b2c3d"  # this host, a process that exited
    report = ProcessorHealth(state=ProcessorState.RUNNING, holder=holder)
    await backend.lease.publish_report(report.model_dump_json(), 30)
    assert await backend.lease.acquire(holder, 30)
    site = OperatorSite(settings, backend)
    health = await site.health()
    assert health.processor.state is ProcessorState.STOPPED
    assert health.processor.cause == f"gone: {holder} (its process no longer runs)"
    # Elsewhere (another host): the lease lapsed, the report has not yet.
    await backend.lease.release(holder)
    other = "elsewhere-1-0a1b2c3d"
    await backend.lease.publish_report(
        ProcessorHealth(state=ProcessorState.RUNNING, holder=other).model_dump_json(), 30
    )
    health = await site.health()
    assert health.processor.cause == f"gone: {other} (it lost the lease)"
    # A live holder stays running.
    assert await backend.lease.acquire(other, 30)
    assert (await site.health()).processor.state is ProcessorState.RUNNING


def test_a_worker_killed_with_sigkill_shows_as_gone(tmp_path: Path) -> None:
    """A real worker on Redis, killed: its report still says running; status says gone."""
    import redis as sync_redis
    from services import REDIS_URL, missing

    probe = sync_redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        probe.ping()
    except sync_redis.RedisError as exc:
        missing(f"no Redis at {REDIS_URL}: {exc}")
    site = new_site_name()
    env = worker_env(site, f"sqlite+aiosqlite:///{tmp_path / 'k.db'}", backend_url=REDIS_URL)
    worker = subprocess.Popen(
        [sys.executable, "-m", "ccat_buffering", "worker"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert worker.stderr is not None
        seen = _read_until(worker.stderr, lambda ls: any("] running" in line for line in ls))
        assert any("] running" in line for line in seen), seen
        deadline = time.monotonic() + 20
        while True:  # the worker publishes its report about once a second
            result = CliRunner().invoke(app, ["status", "--json", "--no-audit"], env=env)
            if json.loads(result.stdout)["processor"]["state"] == "running":
                break
            assert time.monotonic() < deadline, result.stdout
            time.sleep(0.1)  # a poll interval; the deadline bounds the wait
        worker.kill()
        worker.wait(10)
        result = CliRunner().invoke(app, ["status", "--json", "--no-audit"], env=env)
        processor = json.loads(result.stdout)["processor"]
        assert processor["state"] == "stopped", processor
        assert processor["cause"].startswith("gone: ") and "no longer runs" in processor["cause"]
        table = CliRunner().invoke(app, ["status", "--no-audit"], env={**env, "COLUMNS": "200"})
        assert "stopped (gone: " in table.stdout, table.stdout
    finally:
        if worker.poll() is None:
            worker.kill()
        if worker.stderr is not None:
            worker.stderr.close()
        keys = list(probe.scan_iter(match=f"site:{{{site}}}:*", count=1000))
        if keys:
            probe.unlink(*keys)
        probe.close()


async def test_pause_and_resume_show_in_status_and_the_audit_log(
    prepared: BufferingCoordinator,
) -> None:
    paused = await asyncio.to_thread(_run, "pause", "--reason", "main db migration", "--json")
    assert paused.exit_code == 0, paused.output
    assert json.loads(paused.stdout)["reason"] == "main db migration"
    status = await asyncio.to_thread(_run, "status", "--json")
    health = Health.model_validate_json(status.stdout)
    assert health.operator_pause is not None and "main db migration" in health.operator_pause
    assert status.exit_code == 1  # a pause needs looking at: it must not be forgotten
    resumed = await asyncio.to_thread(_run, "resume")
    assert resumed.exit_code == 0 and "resumed; it was paused by operator" in resumed.stdout
    again = await asyncio.to_thread(_run, "resume")
    assert "the drain was not paused" in again.stdout
    listed = json.loads((await asyncio.to_thread(_run, "audit", "--json")).stdout)
    assert [entry["action"] for entry in listed][:3] == [
        "drain.resume",
        "drain.resume",
        "drain.pause",
    ]
    status = await asyncio.to_thread(_run, "status", "--json")
    assert Health.model_validate_json(status.stdout).operator_pause is None
