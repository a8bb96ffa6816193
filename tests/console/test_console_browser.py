"""The web console in a real browser (Debian's Chromium through Playwright), on a real site.

``ccat-buffering console`` runs as its own process over a Redis buffer and a
SQLite main database; the test prepares the site with the library, drives the
pages, and checks the page, the stores and the audit log after each action.
A screenshot of each page is kept in ``tests/artifacts/console/``.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from servers import free_port
from services import REDIS_URL, forget_site, missing
from sqlalchemy import func, select

from ccat_buffering import audit, operator_pause
from ccat_buffering.coordinator import BufferingCoordinator
from ccat_buffering.database import create_engine
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.executor import TransactionExecutor
from ccat_buffering.manager import TransactionManager
from ccat_buffering.models import TransactionState
from ccat_buffering.processor import BackgroundProcessor
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.retry import FailureKind
from ccat_buffering.settings import BufferingSettings
from ccat_buffering.testing import new_site_name
from ccat_buffering_redis import RedisBackend

from support import make_conflict, make_schema, observation, orphan_package, worker_env

CHROMIUM = os.environ.get("CCAT_TEST_CHROMIUM", "/usr/bin/chromium")
ARTEFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
SECRET = "op-s3cret"
MODELS = "ccat_buffering.demo.example:Base"
# HTTP Basic auth, sent with every request (as a browser does once signed in).
OPERATOR = {"Authorization": "Basic " + base64.b64encode(f"ops:{SECRET}".encode()).decode()}


@dataclass
class Prepared:
    site: BufferingCoordinator
    backend: RedisBackend
    url: str
    read_only_url: str
    letters: list[str]
    waiting: list[str]
    conflicted: list[str]
    other: RedisBackend


def _start(env: dict[str, str], port: int, *more: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ccat_buffering",
            "console",
            "--port",
            str(port),
            "--models",
            MODELS,
            *more,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _answering(process: subprocess.Popen[bytes], port: int) -> subprocess.Popen[bytes]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the console exited: {process.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/console/audit", timeout=2).close()
            return process
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    process.kill()
    raise AssertionError("the console did not answer within 30 s")


@pytest.fixture(scope="module", autouse=True)
def _browser_present() -> Iterator[None]:
    if not Path(CHROMIUM).exists():
        missing(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium)")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    yield


@pytest_asyncio.fixture
async def prepared(tmp_path: Path, redis_client: aioredis.Redis) -> AsyncIterator[Prepared]:
    """Three waiting, three dead letters (the foreign key refuses them), two conflicts, a
    worker paused by a real outage (its main database is not there) that published its
    report; another site on the same Redis with two waiting."""
    name = new_site_name()
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    settings = BufferingSettings(site_name=name, backend_url=REDIS_URL, database_url=db_url)
    engine = create_engine(db_url)
    await make_schema(engine)
    backend = RedisBackend(redis_client, site=name)
    registry = ModelRegistry.from_base(Base)
    site = BufferingCoordinator(settings, backend, engine, registry, start=False)
    await site.prepare_database()
    conflicted = [await make_conflict(site, i) for i in (1, 2)]
    other = RedisBackend(redis_client, site=new_site_name())
    await TransactionManager(other).buffer_many([observation(i)[0] for i in (10, 11)])
    await site.manager.buffer_many([orphan_package(i) for i in range(3)])
    deliveries = await site.manager.claim(3, 600)
    await site.manager.failed(
        [
            (d, ValueError(f"orphan {i}: no such unit"), FailureKind.PERMANENT)
            for i, d in enumerate(deliveries)
        ]
    )
    letters = [letter.letter_id for letter in await backend.dead_letters.list()]
    waiting = [observation(i)[0] for i in range(3)]
    await site.manager.buffer_many(waiting)
    # The outage: this worker's main database is a port where nothing listens.
    down = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none")
    worker = BackgroundProcessor(
        site.manager, TransactionExecutor(down, registry), outage_base_delay=60, lease_ttl=600
    )
    assert await worker.run_once() == 0
    await worker.publish()
    await down.dispose()

    env = worker_env(name, db_url, backend_url=REDIS_URL, console_credential=SECRET)
    port, ro_port = free_port(), free_port()
    # Both start at once: most of their start is importing.
    console = _start(env, port, "--sites", other.site)
    read_only_env = {k: v for k, v in env.items() if k != "CCAT_BUFFERING_CONSOLE_CREDENTIAL"}
    read_only = _start(read_only_env, ro_port)
    try:
        _answering(console, port)
        _answering(read_only, ro_port)
    except AssertionError:
        for process in (console, read_only):
            process.kill()
        raise
    try:
        yield Prepared(
            site,
            backend,
            f"http://127.0.0.1:{port}/console",
            f"http://127.0.0.1:{ro_port}/console",
            letters,
            [tx.transaction_id for tx in waiting],
            conflicted,
            other,
        )
    finally:
        for process in (console, read_only):
            process.terminate()
            process.wait(10)
        await forget_site(redis_client, backend.keys.pattern())
        await forget_site(redis_client, other.keys.pattern())
        await engine.dispose()


async def _shot(page: object, name: str) -> None:
    await page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


async def _no_sideways_scroll(page: object) -> None:
    wide = await page.evaluate(  # type: ignore[attr-defined]
        "document.documentElement.scrollWidth - window.innerWidth"
    )
    assert wide <= 1, f"the page scrolls sideways by {wide} px"


async def _units(site: BufferingCoordinator) -> int:
    async with site.engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(ExecutedObsUnit))).scalar_one()
        )


async def _unit_status(site: BufferingCoordinator, unit: str) -> str:
    async with site.engine.connect() as conn:
        query = select(ExecutedObsUnit.status).where(ExecutedObsUnit.id == unit)
        return str((await conn.execute(query)).scalar_one())


async def test_the_console_in_a_browser(prepared: Prepared) -> None:
    from playwright.async_api import async_playwright

    backend = prepared.backend
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            ops = await browser.new_context(
                viewport={"width": 1280, "height": 800},
                extra_http_headers=OPERATOR,
            )
            page = await ops.new_page()

            # The overview during the outage: the processor's state and cause.
            await page.goto(prepared.url)
            assert await page.text_content("#processor-state") == "paused"
            cause = await page.text_content("#processor-cause") or ""
            assert "database" in cause
            assert (await page.text_content("#depth") or "").strip() == "3"
            assert "operator: console:ops" in (await page.text_content("#who") or "")
            await _no_sideways_scroll(page)
            await _shot(page, "overview")

            # Transactions: filter, then open one with its history and payload.
            await page.goto(f"{prepared.url}/transactions")
            await page.select_option("select[name=state]", "buffered")
            await page.fill("input[name=q]", prepared.waiting[1][:8])
            await page.click("form.filters button[type=submit]")
            rows = page.locator("#transactions tbody tr")
            assert await rows.count() == 1
            await _shot(page, "transactions")
            await page.click(f"a[href$='{prepared.waiting[1]}']")
            assert await page.text_content("#tx-state") == "buffered"
            history = await page.text_content("#history") or ""
            assert "buffered" in history and "outage pause" in history
            assert prepared.waiting[1] in (await page.text_content("#payload") or "")
            await _shot(page, "transaction")

            # One letter: count, dry run (nothing changes), replay (to the head), audited.
            await page.goto(f"{prepared.url}/letters")
            assert (await page.text_content("#matching") or "").startswith("3 letter(s)")
            first = prepared.letters[0]
            await page.check(f"input[value='{first}']")
            await page.click("text=Replay…")
            await page.wait_for_selector("#plan-count")
            assert await page.get_attribute("#plan-count", "data-count") == "1"
            await page.click("text=Dry run at the main database")
            await page.wait_for_selector("#dry-run")
            dry = await page.text_content("#dry-run") or ""
            assert first in dry and "fails" in dry and "FOREIGN KEY" in dry.upper()
            assert await _units(prepared.site) == 2  # the two conflicted units only
            assert len(await backend.dead_letters.list()) == 3
            await _shot(page, "letters-dry-run")
            await page.click("text=Confirm replay of 1")
            await page.wait_for_selector("#result [data-kind=done]")
            assert "replayed 1" in (await page.text_content("#result") or "")
            assert {letter.letter_id for letter in await backend.dead_letters.list()} == set(
                prepared.letters[1:]
            )
            (head,) = await backend.buffer.claim(1, 1)  # back at the head of the buffer
            assert first in head.payload
            await backend.buffer.recover(include_unexpired=True)
            (entry,) = await audit.list(backend, 1)
            assert (entry.action, entry.count, entry.principal) == (
                "console.replay",
                1,
                "console:ops",
            )

            # Every letter matching a filter: a count first, then the purge.
            await page.goto(f"{prepared.url}/letters?q=orphan")
            await page.click("text=Purge…")
            await page.wait_for_selector("#plan-count")
            assert await page.get_attribute("#plan-count", "data-count") == "2"
            await page.click("text=Confirm purge of 2")
            await page.wait_for_selector("#result [data-kind=done]")
            assert await backend.dead_letters.list() == []
            (entry,) = await audit.list(backend, 1)
            assert (entry.action, entry.count) == ("console.purge", 2)
            assert "orphan" in entry.detail
            assert "2 conflict(s)" in (await page.text_content("#conflicts") or "")
            await _shot(page, "letters")

            # Pause and resume the drain.
            await page.goto(prepared.url)
            await page.fill("input[name=reason]", "main db migration")
            await page.click("text=Pause the drain")
            await page.wait_for_selector("#drain-result [data-kind=done]")
            held = await operator_pause.current(backend)
            assert held is not None and held.reason == "main db migration"
            assert held.by == "console:ops"
            await page.reload()
            assert "main db migration" in (await page.text_content("#operator-pause") or "")
            await page.click("text=Resume the drain")
            await page.wait_for_selector("#drain-result [data-kind=done]")
            assert await operator_pause.current(backend) is None
            actions = [e.action for e in await audit.list(backend, 2)]
            assert actions == ["drain.resume", "drain.pause"]
            await page.goto(f"{prepared.url}/audit")
            assert "console.purge" in (await page.text_content("#audit") or "")
            await _shot(page, "audit")

            # Conflicts: filter, open one with its diff, keep mine; the other stays open.
            await page.goto(f"{prepared.url}/conflicts?model=ExecutedObsUnit")
            assert "2 open conflict(s)" in (await page.text_content("#conflict-matching") or "")
            await _shot(page, "conflicts")
            await page.click(f"#conflicts a[href$='/transactions/{prepared.conflicted[0]}']")
            assert await page.text_content("#tx-state") == "conflicted"
            await page.go_back()
            await page.click("#conflicts tbody tr:last-child td[data-label=id] a")  # the oldest
            diff = await page.text_content("#diff") or ""
            assert "new" in diff and "site-1" in diff and "main-1" in diff
            await _shot(page, "conflict")
            await page.click("text=Keep mine…")
            await page.wait_for_selector("#plan-count")
            assert await page.get_attribute("#plan-count", "data-count") == "1"
            await page.click("text=Confirm keep mine for 1")
            await page.wait_for_selector("#result [data-kind=done]")
            assert "resolved 1 conflict(s), kept mine" in (await page.text_content("#result") or "")
            assert await _unit_status(prepared.site, "unit-1") == "site-1"
            status = await prepared.site.manager.status(prepared.conflicted[0])
            assert status is not None and status.state is TransactionState.COMMITTED
            (entry,) = await audit.list(backend, 1)
            assert (entry.action, entry.count, entry.principal) == (
                "console.conflict-keep-mine",
                1,
                "console:ops",
            )
            await page.reload()
            assert await page.text_content("#conflict-outcome") == "resolved_mine"

            # Every site on the Redis, each with its numbers and a link into its pages.
            await page.goto(prepared.url + "/sites")
            assert await page.locator("#sites tbody tr").count() == 2
            row = page.locator(f"#sites tr[data-site='{prepared.other.site}']")
            assert (await row.locator(".depth").text_content() or "").strip() == "2"
            await _shot(page, "sites")
            await row.locator("a").first.click()
            assert (await page.text_content("#depth") or "").strip() == "2"
            assert prepared.other.site in (await page.text_content("header h1") or "")

            # At phone width: nothing scrolls sideways.
            phone = await browser.new_context(
                viewport={"width": 390, "height": 844},
                extra_http_headers=OPERATOR,
            )
            small = await phone.new_page()
            for path, name in (
                ("", "overview"),
                ("/transactions", "transactions"),
                ("/conflicts", "conflicts"),
                ("/sites", "sites"),
                ("/audit", "audit"),
            ):
                await small.goto(prepared.url + path)
                await _no_sideways_scroll(small)
                await _shot(small, f"phone-{name}")

            # Read-only: no action is offered, and every action is refused.
            await prepared.site.manager.buffer(orphan_package(9))
            (d,) = await prepared.site.manager.claim(1, 600)
            await prepared.site.manager.failed([(d, ValueError("x"), FailureKind.PERMANENT)])
            viewer = await (
                await browser.new_context(viewport={"width": 1280, "height": 800})
            ).new_page()
            await viewer.goto(f"{prepared.read_only_url}/letters")
            assert "read-only" in (await viewer.text_content("#who") or "")
            assert await viewer.locator("input[name=ids]").count() == 0
            assert await viewer.locator("text=Replay…").count() == 0
            await _shot(viewer, "read-only-letters")
            for path in (
                "/letters/replay",
                "/letters/purge",
                "/pause",
                "/resume",
                "/letters/plan",
                "/conflicts/plan",
                "/conflicts/resolve",
            ):
                answer = await viewer.request.post(
                    prepared.read_only_url + path,
                    headers={"HX-Request": "true"},
                    form={"q": "", "keep": "theirs"},
                )
                assert answer.status == 403, path
            await viewer.goto(f"{prepared.read_only_url}/conflicts")
            assert await viewer.locator("text=Keep theirs…").count() == 0
            # And on the operator's console without the credential.
            answer = await viewer.request.post(
                prepared.url + "/letters/purge", headers={"HX-Request": "true"}, form={"q": ""}
            )
            assert answer.status == 403
            assert len(await backend.dead_letters.list()) == 1
            assert await operator_pause.current(backend) is None
            status = await prepared.site.manager.status(prepared.waiting[0])
            assert status is not None and status.state is TransactionState.BUFFERED
            status = await prepared.site.manager.status(prepared.conflicted[1])
            assert status is not None and status.state is TransactionState.CONFLICTED
            assert await _unit_status(prepared.site, "unit-2") == "main-2"
        finally:
            await browser.close()
