"""The console's routes without a browser: counts that went stale, refusals, the host's auth."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from ccat_buffering import audit
from ccat_buffering.console import ConsoleSite, console_router
from ccat_buffering.coordinator import BufferingCoordinator
from ccat_buffering.database import create_engine
from ccat_buffering.demo.example import Base
from ccat_buffering.metrics import SiteMetrics
from ccat_buffering.models import TransactionState
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.retry import FailureKind
from ccat_buffering.settings import BufferingSettings
from ccat_buffering_memory import MemoryBackend

from support import make_schema, orphan_package

HX = {"HX-Request": "true"}
AUTH = {"Authorization": "Basic " + base64.b64encode(b"ops:pw").decode(), **HX}


async def _site(tmp_path: Path) -> BufferingCoordinator:
    url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    settings = BufferingSettings(site_name="routes", database_url=url, console_credential="pw")
    engine = create_engine(url)
    await make_schema(engine)
    registry = ModelRegistry.from_base(Base)
    site = BufferingCoordinator(settings, MemoryBackend("routes"), engine, registry, start=False)
    await site.prepare_database()
    await site.manager.buffer_many([orphan_package(i) for i in range(3)])
    deliveries = await site.manager.claim(3, 600)
    await site.manager.failed([(d, ValueError("no"), FailureKind.PERMANENT) for d in deliveries])
    return site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[BufferingCoordinator]:
    coordinator = asyncio.run(_site(tmp_path))
    yield coordinator
    asyncio.run(coordinator.engine.dispose())


def _client(site: BufferingCoordinator, **options: object) -> TestClient:
    app = FastAPI()
    app.include_router(console_router(ConsoleSite.of(site), **options))  # type: ignore[arg-type]
    return TestClient(app)


def test_a_confirmed_count_that_went_stale_is_refused(site: BufferingCoordinator) -> None:
    client = _client(site)
    plan = client.post("/console/letters/plan", data={"action": "purge"}, headers=AUTH)
    assert 'data-count="3"' in plan.text
    asyncio.run(site.manager.buffer(orphan_package(7)))
    (delivery,) = asyncio.run(site.manager.claim(1, 600))
    asyncio.run(site.manager.failed([(delivery, ValueError("late"), FailureKind.PERMANENT)]))
    stale = client.post("/console/letters/purge", data={"confirm": "3"}, headers=AUTH)
    assert stale.status_code == 409 and "now holds 4" in stale.text
    assert len(asyncio.run(site.backend.dead_letters.list())) == 4
    done = client.post("/console/letters/purge", data={"confirm": "4"}, headers=AUTH)
    assert done.status_code == 200 and "purged 4" in done.text
    (entry,) = asyncio.run(audit.list(site.backend, 1))
    assert (entry.action, entry.count, entry.principal) == ("console.purge", 4, "console:ops")


def test_actions_need_the_consoles_own_request_and_an_operator(
    site: BufferingCoordinator,
) -> None:
    client = _client(site)
    no_header = {"Authorization": AUTH["Authorization"]}
    assert client.post("/console/pause", headers=no_header).status_code == 400
    assert client.post("/console/pause", headers=HX).status_code == 403
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ops:nope").decode(), **HX}
    assert client.post("/console/letters/purge", headers=wrong).status_code == 403
    assert len(asyncio.run(site.backend.dead_letters.list())) == 3
    assert asyncio.run(audit.list(site.backend, 10)) == []
    assert client.get("/console/transactions/nope").status_code == 404
    assert client.get("/console/transactions?state=bogus").status_code == 400


def test_the_host_applications_own_operator(site: BufferingCoordinator) -> None:
    async def who(request: Request) -> str | None:
        return "http:alice" if request.headers.get("x-user") == "alice" else None

    client = _client(site, operator=who)
    assert client.post("/console/pause", headers=AUTH).status_code == 403  # the credential no more
    paused = client.post("/console/pause", data={"reason": "r"}, headers={"x-user": "alice", **HX})
    assert paused.status_code == 200 and "http:alice" in paused.text
    metrics = SiteMetrics(site)  # type: ignore[arg-type]
    asyncio.run(metrics.refresh())
    assert metrics.operator_paused.labels("routes")._value.get() == 1
    client.post("/console/resume", headers={"x-user": "alice", **HX})
    asyncio.run(metrics.refresh())
    assert metrics.operator_paused.labels("routes")._value.get() == 0


def test_conflicts_listed_shown_and_resolved_by_filter(site: BufferingCoordinator) -> None:
    from support import make_conflict

    txs = [asyncio.run(make_conflict(site, i)) for i in range(2)]
    client = _client(site)
    page = client.get("/console/conflicts?model=ExecutedObsUnit")
    assert page.status_code == 200 and "2 open conflict(s) match" in page.text
    listed = client.get("/console/conflicts?kind=insert_exists")
    assert "0 open conflict(s) match" in listed.text
    first = min(asyncio.run(_conflict_ids(site)))
    shown = client.get(f"/console/conflicts/{first}")
    assert "site-0" in shown.text and "main-0" in shown.text and ">new<" in shown.text
    form = {"model": "ExecutedObsUnit", "kind": "", "of_site": "routes", "keep": "theirs"}
    plan = client.post("/console/conflicts/plan", data=form, headers=AUTH)
    assert 'data-count="2"' in plan.text
    done = client.post("/console/conflicts/resolve", data={**form, "confirm": "2"}, headers=AUTH)
    assert done.status_code == 200 and "resolved 2 conflict(s), kept theirs" in done.text
    assert asyncio.run(_conflict_ids(site)) == []
    for tx in txs:
        status = asyncio.run(site.status(tx))
        assert status is not None and status.state.value == "failed"
    (entry,) = asyncio.run(audit.list(site.backend, 1))
    assert (entry.action, entry.count) == ("console.conflict-keep-theirs", 2)
    assert "model=ExecutedObsUnit" in entry.detail


def _log_rows(n: int, model: str, of_site: str = "routes", **values: object) -> list[dict]:
    from ccat_buffering.models import utc_now

    row = {"endpoint": "e", "step_id": "s", "key": "{}", "base": "{}", "mine": "{}"}
    row |= {"theirs": "{}", "policy": "reject", "outcome": "rejected", "payload": None}
    row |= {"kind": "update_origin_differs", "detected_at": utc_now(), "resolved_at": None}
    return [
        {**row, "site": of_site, "transaction_id": f"{model}-{of_site}-{i}", "model": model}
        | values
        for i in range(n)
    ]


def test_conflict_pages_filter_and_page_in_the_query(site: BufferingCoordinator) -> None:
    from ccat_buffering.conflicts.log import insert_rows

    async def fill() -> None:
        async with site.engine.begin() as conn:
            # The oldest 70 match; 1,100 newer open conflicts of the site do not (another
            # model or kind): a read of the newest 1,000 open ones would miss them all.
            await insert_rows(conn, _log_rows(70, "Wanted"))
            await insert_rows(conn, _log_rows(800, "Other"))
            await insert_rows(conn, _log_rows(300, "Wanted", kind="update_missing"))
            await insert_rows(conn, _log_rows(200, "Wanted", of_site="elsewhere"))
            await insert_rows(conn, _log_rows(200, "Wanted", outcome="applied"))

    asyncio.run(fill())
    client = _client(site)
    link = "/console/conflicts?model=Wanted&kind=update_origin_differs"
    shown: list[str] = []
    for _ in range(3):
        page = client.get(link)
        assert 'id="conflict-matching">70 open conflict(s) match' in page.text
        shown += re.findall(r'data-label="transaction"><a href="[^"]*">([^<]+)<', page.text)
        found = re.search(r'href="(/console/conflicts\?[^"]*)" rel="next"', page.text)
        if found is None:
            break
        link = found.group(1).replace("&amp;", "&")
    assert shown == [f"Wanted-routes-{i}" for i in reversed(range(70))]  # 50 + 20, newest first
    every_site = client.get("/console/conflicts?model=Wanted&kind=update_origin_differs&of_site=")
    assert 'id="conflict-matching">270 open conflict(s) match' in every_site.text


async def _conflict_ids(site: BufferingCoordinator) -> list[int]:
    from ccat_buffering.conflicts.log import list_conflicts

    async with site.engine.connect() as conn:
        return [r.id for r in await list_conflicts(conn, unresolved_only=True)]


def test_chart_samples_survive_a_restart_of_the_console(site: BufferingCoordinator) -> None:
    from ccat_buffering.console._samples import Samples

    backend = site.backend
    assert isinstance(backend, MemoryBackend)
    health = asyncio.run(site.health())
    now = [1000.0]
    first = Samples(backend, hours=1, interval=10, clock=lambda: now[0])
    for _ in range(400):  # more than an hour of samples: the store keeps 360
        asyncio.run(first.add(health))
        now[0] += 10
    restarted = Samples(backend, hours=1, interval=10, clock=lambda: now[0])
    asyncio.run(restarted.load())
    assert len(restarted.ring) == 360 == len(asyncio.run(backend.chart_samples()))
    assert [s.at for s in restarted.ring] == [s.at for s in first.ring]
    twin = Samples(backend, hours=1, interval=10, clock=lambda: now[0] - 5)
    asyncio.run(twin.add(health))  # another console of the site: not due yet
    assert len(asyncio.run(backend.chart_samples())) == 360 and len(twin.ring) == 360


class _CountingStatuses:
    """The site's status store, counting the ids and statuses a page reads."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.ids_read = 0
        self.statuses_read = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def ids(self, state: object, limit: int | None = None) -> list[str]:
        found: list[str] = await self.inner.ids(state, limit)  # type: ignore[attr-defined]
        self.ids_read += len(found)
        return found

    async def ids_after(self, state: object, after: str | None, limit: int) -> object:
        found, cursor = await self.inner.ids_after(state, after, limit)  # type: ignore[attr-defined]
        self.ids_read += len(found)
        return found, cursor

    async def get_many(self, ids: list[str]) -> object:
        self.statuses_read += len(ids)
        return await self.inner.get_many(ids)  # type: ignore[attr-defined]


def test_a_page_reads_its_own_ids_not_those_before_it(site: BufferingCoordinator) -> None:
    from support import observation

    asyncio.run(site.manager.buffer_many([observation(i)[0] for i in range(180)]))
    every = asyncio.run(site.backend.status.ids(TransactionState.BUFFERED))
    counting = _CountingStatuses(site.backend.status)
    site.backend.status = counting  # type: ignore[misc]
    client = _client(site)
    shown: list[str] = []
    link = "/console/transactions?state=buffered"
    for _ in range(4):
        counting.ids_read = counting.statuses_read = 0
        page = client.get(link)
        shown += re.findall(r'<td class="id" data-label="id"><a href="[^"]*">([^<]+)<', page.text)
        assert counting.ids_read <= 50 and counting.statuses_read <= 50
        found = re.search(r'href="(/console/transactions\?[^"]*)" rel="next"', page.text)
        if found is None:
            break
        link = found.group(1).replace("&amp;", "&")
    assert shown == every  # 50 + 50 + 50 + 30, in order, none twice


class _CountingLetters:
    """The site's dead-letter store, counting the letters a page reads."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.read = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def list(self, offset: int = 0, limit: int | None = None) -> object:
        found: list[object] = await self.inner.list(offset, limit)  # type: ignore[attr-defined]
        self.read += len(found)
        return found

    async def letters_after(self, after: str | None, limit: int) -> object:
        found, cursor = await self.inner.letters_after(after, limit)  # type: ignore[attr-defined]
        self.read += len(found)
        return found, cursor


def test_a_letters_page_reads_its_own_letters_not_those_before_it(
    site: BufferingCoordinator,
) -> None:
    async def more_letters() -> None:
        await site.manager.buffer_many([orphan_package(i) for i in range(3, 120)])
        deliveries = await site.manager.claim(117, 600)
        await site.manager.failed(
            [(d, ValueError("no"), FailureKind.PERMANENT) for d in deliveries]
        )

    asyncio.run(more_letters())
    every = [letter.letter_id for letter in asyncio.run(site.backend.dead_letters.list())]
    counting = _CountingLetters(site.backend.dead_letters)
    site.backend.dead_letters = counting  # type: ignore[misc]
    client = _client(site)
    for query in ("", "&q=orphan"):  # a filter that every letter passes reads a page too
        shown: list[str] = []
        link = "/console/letters?page=0" + query
        for _ in range(4):
            counting.read = 0
            page = client.get(link)
            assert "120 letter(s) match" in page.text or "among 120 dead letter(s)" in page.text
            shown += re.findall(
                r'<td class="id" data-label="letter"><a href="[^"]*">([^<]+)<', page.text
            )
            assert counting.read <= 50
            found = re.search(r'href="(/console/letters\?[^"]*)" rel="next"', page.text)
            if found is None:
                break
            link = found.group(1).replace("&amp;", "&")
        assert shown == every  # 50 + 50 + 20, in arrival order, none twice
    assert client.get("/console/letters?after=nope").status_code == 400
    assert client.get("/console/transactions?after=nope").status_code == 400


async def test_redis_pages_from_a_cursor_across_buckets(redis_client: object) -> None:
    from services import forget_site

    from ccat_buffering.testing import new_site_name
    from ccat_buffering_redis import RedisBackend

    from support import observation

    backend = RedisBackend(redis_client, site=new_site_name())  # type: ignore[arg-type]
    try:
        from ccat_buffering.manager import TransactionManager

        manager = TransactionManager(backend)
        await manager.buffer_many([observation(i)[0] for i in range(300)])  # 3 buckets
        for status in await backend.status.get_many(
            (await backend.status.ids(TransactionState.BUFFERED))[::3]
        ):
            assert status is not None  # a terminal state: a zset by expiry, many ties
            await backend.status.put(status.advance(TransactionState.FAILED), 600)
        for state in (TransactionState.BUFFERED, TransactionState.FAILED):
            every = await backend.status.ids(state)
            paged: list[str] = []
            cursor = None
            while True:
                ids, cursor = await backend.status.ids_after(state, cursor, 70)
                paged += ids
                if cursor is None:
                    break
            assert paged == every and len(every) == (200 if state == "buffered" else 100)
        ids, cursor = await backend.status.ids_after(TransactionState.BUFFERED, None, 200)
        assert len(ids) == 200 and cursor is None
    finally:
        await forget_site(redis_client, backend.keys.pattern())  # type: ignore[arg-type]
