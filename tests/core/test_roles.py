"""Roles: one process per site confirms and counts; log lines stand on their own."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccat_buffering import BufferingCoordinator, BufferingSettings
from ccat_buffering.demo.example import Base
from ccat_buffering.drain.database import create_engine
from ccat_buffering.logs import SiteLogger, configure
from ccat_buffering.write.models import TransactionState, TransactionStatus
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend

from support import make_schema, observation


def _settings(tmp_path: Path, **overrides: object) -> BufferingSettings:
    values: dict[str, object] = {
        "site_name": "cerro",
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'main.db'}",
        "poll_interval": 0.01,
        "replication_poll_interval": 0.01,
        **overrides,
    }
    return BufferingSettings(**values)  # type: ignore[arg-type]


class Counted:
    def __init__(self) -> None:
        self.replicated: list[str] = []

    def changed(self, statuses: list[TransactionStatus]) -> None:
        self.replicated += [
            s.transaction_id for s in statuses if s.state is TransactionState.REPLICATED
        ]


@pytest.mark.parametrize("site_type", ["secondary", "main"])
async def test_only_the_lease_holder_confirms_replication(tmp_path: Path, site_type: str) -> None:
    settings = _settings(tmp_path, site_type=site_type)
    registry = ModelRegistry.from_base(Base)
    backend = MemoryBackend("cerro")
    engine = create_engine(settings.database_url or "")
    await make_schema(engine)
    sites = [BufferingCoordinator(settings, backend, engine, registry) for _ in range(2)]
    counts = [Counted() for _ in sites]
    for site, counted in zip(sites, counts, strict=True):
        site.manager.listeners.append(counted)
    await sites[0].prepare_database()
    try:
        for site in sites:
            site.start()
        ids = []
        for i in range(20):
            tx, _ = observation(i)
            ids.append((await sites[i % 2].submit(tx)).transaction_id)
        deadline = asyncio.get_running_loop().time() + 20
        while sum(len(c.replicated) for c in counts) < len(ids):
            assert asyncio.get_running_loop().time() < deadline, counts
            await asyncio.sleep(0.01)
        confirming = [site for site in sites if site.tracker.confirming]
        assert len(confirming) == 1
        leader = sites.index(confirming[0])
        assert sorted(counts[leader].replicated) == sorted(ids)
        assert counts[1 - leader].replicated == []
    finally:
        for site in sites:
            await site.stop()
        await engine.dispose()


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    yield capsys
    configure("host")


def test_the_library_handler_writes_whole_lines_under_any_host_config(
    stderr: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    host = io.StringIO()
    handler = logging.StreamHandler(host)
    handler.setFormatter(logging.Formatter("%(message)s"))  # a host's bare format
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    assert configure("library", "text", "INFO")
    SiteLogger("ccat_buffering.somewhere", "cerro").info("hello", transaction_id="tx-1")
    line = stderr.readouterr().err.strip()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ccat_buffering\.somewhere "
        r"\[site=cerro tx=tx-1\] hello",
        line,
    ), line
    assert host.getvalue() == ""  # not passed on to the host's handler as well
    # auto: a configured root logger gets the records through its handlers.
    assert not configure("auto")
    SiteLogger("ccat_buffering.somewhere", "cerro").warning("again")
    assert host.getvalue() == "again\n"


def test_json_is_one_setting_away(
    stderr: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    assert configure("auto", "json", "INFO")  # nobody configured the root logger
    SiteLogger("ccat_buffering_redis.backend", "cerro").info("x=%d", 1, transaction_id="t")
    line = json.loads(stderr.readouterr().err)
    assert line["site"] == "cerro" and line["tx"] == "t" and line["message"] == "x=1"
    assert line["level"] == "INFO" and line["time"].endswith("+00:00")


async def test_status_does_not_say_running_while_a_call_hangs(tmp_path: Path) -> None:
    from ccat_buffering.drain.processor import ProcessorState

    from support import memory_sqlite_site

    async with memory_sqlite_site(tmp_path) as site:
        tx, _ = observation(1)
        await site.manager.buffer(tx)
        hung = asyncio.Event()

        async def hang(transactions: object) -> None:
            hung.set()
            await asyncio.Event().wait()  # a link that drops packets: no answer, no reset

        site.processor.executor.execute_batch = hang  # type: ignore[method-assign, assignment]
        site.processor.stall_after = 10.0
        site.processor.state = ProcessorState.RUNNING  # as run() sets it
        cycle = asyncio.create_task(site.processor.run_once())
        await hung.wait()
        assert (await site.processor.health()).state is ProcessorState.RUNNING
        site.clock.advance(30)
        health = await site.processor.health()
        assert health.state is ProcessorState.PAUSED
        assert health.cause is not None and "not answering for 30 s" in health.cause
        cycle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cycle
        assert site.processor.stalled_for() is None
