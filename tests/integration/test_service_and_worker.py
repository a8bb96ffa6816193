"""Two processes per site, as deployed: a FastAPI service under uvicorn and a worker.

The docs page's observatory service runs under uvicorn in a subprocess, a
``ccat-buffering worker`` in another, on the test Redis and a PostgreSQL
primary with a streaming replica. Only the worker drains and confirms; both
serve metrics, and the runbook's alert expressions are evaluated against the
worker's real series; the service's log lines stand on their own. The worker
reaches the main database through a link relay that is cut when it starts and
restored later: waits time out cleanly during the outage and return after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from promql import Scrapes, evaluate, metrics_of, samples
from servers import Replicated, free_port
from services import REDIS_URL, forget_site, redis_client
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.testing import new_site_name
from ccat_buffering_redis.keys import SiteKeys

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "docs" / "examples"
RUNBOOK = ROOT / "docs" / "operations.rst"
CLI = Path(sys.executable).with_name("ccat-buffering")
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>\S+) "
    r"\[site=(?P<site>\S+) tx=(?P<tx>\S+)\] (?P<message>.*)$"
)


async def until(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def alert_expressions() -> list[str]:
    """Every ``expr:`` of the runbook's alert rules."""
    found = re.findall(r"^\s+expr: (.+)$", RUNBOOK.read_text(), re.MULTILINE)
    assert len(found) >= 4, "the runbook's alert rules are gone"
    return found


@asynccontextmanager
async def site_database(replicated: Replicated) -> AsyncIterator[tuple[str, str]]:
    """A database on the primary with the example's schema; its primary and replica URLs."""
    name = f"ccat_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(replicated.primary_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    primary = make_url(replicated.primary_url).set(database=name).render_as_string(False)
    replica = make_url(replicated.replica_url).set(database=name).render_as_string(False)
    engine = create_async_engine(primary)
    async with engine.begin() as conn:
        # The example's tables; ``db init`` (below) adds the ledger, as the docs say.
        sys.path.insert(0, str(EXAMPLES))
        try:
            import observatory_service

            await conn.run_sync(observatory_service.Base.metadata.create_all)
        finally:
            sys.path.remove(str(EXAMPLES))
    await engine.dispose()
    try:
        yield primary, replica
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


class Process:
    """A child process whose standard error goes to a file, stopped by SIGTERM."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        self.popen = subprocess.Popen(
            args, env=env, cwd=EXAMPLES, stdout=self._file, stderr=subprocess.STDOUT
        )

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._file.close()


def environment(site: str, primary: str, replica: str, **more: str) -> dict[str, str]:
    settings = {
        "SITE_NAME": site,
        "BACKEND_URL": REDIS_URL,
        "DATABASE_URL": primary,
        "REPLICA_URL": replica,
        "POLL_INTERVAL": "0.05",
        "REPLICATION_POLL_INTERVAL": "0.05",
        "MAX_ATTEMPTS": "1",
        "WAIT_POLL_INTERVAL": "0.05",
        **more,
    }
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CCAT_BUFFERING_")},
        **{f"CCAT_BUFFERING_{name}": value for name, value in settings.items()},
    }


def status_of(env: dict[str, str]) -> dict[str, Any]:
    """What the operator's ``status --json`` says of the site."""
    shown = subprocess.run(
        [str(CLI), "status", "--json"], env=env, cwd=EXAMPLES, capture_output=True, text=True
    )
    assert shown.stdout, shown.stderr
    return dict(json.loads(shown.stdout))


async def scrape(client: httpx.AsyncClient, url: str) -> str:
    answer = await client.get(url)
    assert answer.status_code == 200, answer.text
    return answer.text


async def test_the_service_submits_and_the_worker_drains(
    replicated: Replicated, tmp_path: Path
) -> None:
    assert CLI.exists() and shutil.which("true")
    redis = await redis_client()
    site = new_site_name()
    metrics_port = free_port()
    processes: list[Process] = []
    links: list[LoopbackRelay] = []
    async with (
        site_database(replicated) as (primary, replica),
        httpx.AsyncClient(timeout=30) as http,
    ):
        try:
            env = environment(site, primary, replica)
            init = subprocess.run(
                [str(CLI), "db", "init"], env=env, cwd=EXAMPLES, capture_output=True, text=True
            )
            assert init.returncode == 0, init.stderr
            service = Process(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "observatory_service:app",
                    "--port",
                    "0",  # uvicorn picks a free port and says which
                ],
                environment(site, primary, replica, LOG_LEVEL="INFO"),
                tmp_path / "service.log",
            )
            processes.append(service)

            async def listening() -> str | None:
                assert service.popen.poll() is None, "\n".join(service.lines())
                found = re.search(r"running on (http://\S+)", service.log.read_text())
                return None if found is None else found[1]

            http.base_url = httpx.URL(await until(listening, "the service listens"))
            created = await http.post("/observations", json={"target": "Orion KL"})
            assert created.status_code == 201, created.text
            first = created.headers["X-Transaction-Id"]
            obs_id = created.json()["id"]
            # The service does not drain: nobody holds the site's lease.
            health = (await http.get("/buffering/health")).json()
            assert health["processor"]["lease_held"] is False, health  # the public view
            assert any("no processor holds the lease" in w for w in health["warnings"])

            # A client retrying with its key gets the first transaction, concurrently too.
            files = [{"path": f"/raw/{i}.fits", "size_bytes": i} for i in range(5)]
            key = {"Idempotency-Key": f"files-of-{obs_id}"}
            sent = await asyncio.gather(
                *(
                    http.post(f"/observations/{obs_id}/files", json=files, headers=key)
                    for _ in range(5)
                )
            )
            assert {r.status_code for r in sent} == {201}
            assert len({r.headers["X-Transaction-Id"] for r in sent}) == 1
            assert len({tuple(r.json()["ids"]) for r in sent}) == 1
            reused = await http.post(f"/observations/{obs_id}/files", json=files[:1], headers=key)
            assert reused.status_code == 422, reused.text
            finished = await http.post(f"/observations/{obs_id}/finish")
            last = finished.headers["X-Transaction-Id"]
            # Files of an observation that does not exist: the foreign key refuses them
            # (a data error, dead-lettered; finishing a missing row would be a conflict).
            poison = await http.post(f"/observations/{uuid.uuid4()}/files", json=files[:1])
            poison_id = poison.headers["X-Transaction-Id"]

            # Nothing drains yet: a wait times out cleanly with the last state.
            early = await http.get(f"/buffering/transactions/{first}?wait=committed&timeout=0.3")
            assert early.status_code == 202 and early.json()["state"] == "buffered"

            # The worker starts while its link to the main database is cut.
            target = make_url(primary)
            link = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432)  # down
            links.append(link)
            through_link = target.set(port=link.port).render_as_string(False)
            outage = {
                "OUTAGE_BASE_DELAY": "0.05",
                "OUTAGE_MAX_DELAY": "0.2",
                "OUTAGE_PROBE_INTERVAL": "0.1",
                "CONNECT_TIMEOUT": "1",
            }
            worker = Process(
                [
                    str(CLI),
                    "worker",
                    "--models",
                    "observatory_service:Base",
                    "--metrics-port",
                    str(metrics_port),
                    "-v",
                ],
                environment(site, through_link, replica, **outage),
                tmp_path / "worker.log",
            )
            processes.append(worker)
            worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"

            async def worker_scrape() -> str | None:
                try:
                    return await scrape(http, worker_metrics)
                except httpx.TransportError:
                    assert worker.popen.poll() is None, "\n".join(worker.lines())
                    return None

            before = samples(await until(worker_scrape, "the worker serves metrics"))
            # During the outage a wait times out cleanly with the last state, and the
            # worker says why it does not drain.
            during = await http.get(f"/buffering/transactions/{first}?wait=committed&timeout=1")
            assert during.status_code == 202 and during.json()["state"] == "buffered"

            async def paused() -> bool:
                # The worker's published report, read where the operator's status reads
                # it (each ``status`` process costs an interpreter's start-up).
                report = await redis.get(SiteKeys(site).processor)  # type: ignore[attr-defined]
                return report is not None and json.loads(report)["state"] == "paused"

            await until(paused, "the worker pauses while the link is cut")
            assert status_of(env)["processor"]["state"] == "paused"
            assert samples(await scrape(http, worker_metrics)).get(
                "ccat_buffering_committed_total", {}
            ) in ({}, {frozenset({("site", site)}): 0.0})
            await link.start()  # the link is restored
            started_at = time.monotonic()

            async def state(tx: str) -> str:
                return str((await http.get(f"/buffering/transactions/{tx}")).json()["state"])

            # Waits return at committed and at replicated, with no polling by the client.
            url = "/buffering/transactions/{}?wait={}&timeout=60"
            committed, visible, dead = await asyncio.gather(
                http.get(url.format(first, "committed")),
                http.get(url.format(last, "replicated")),
                http.get(url.format(poison_id, "replicated")),
            )
            assert committed.status_code == 200, committed.text
            assert committed.json()["state"] in ("committed", "replicated")
            assert visible.status_code == 200 and visible.json()["state"] == "replicated"
            assert dead.status_code == 409 and dead.json()["state"] == "failed"
            assert await state(first) in ("committed", "replicated")
            await until(lambda: _is(state(first), "replicated"), "the first write replicated")

            # Only the worker drained: it holds the lease, and counted every commit once.
            # (the operator's view names the holder; the public health route does not)
            holder = status_of(env)["processor"]["lease_holder"]
            assert f"-{worker.popen.pid}-" in holder, holder

            async def settled() -> dict[str, Any] | None:
                found = samples(await scrape(http, worker_metrics))
                replicated_ = found["ccat_buffering_replicated_total"]
                letters = found["ccat_buffering_dead_letters"]  # a gauge, read every second
                return found if sum(replicated_.values()) == 3 and sum(letters.values()) else None

            after = await until(settled, "the worker counted three replications, one letter")
            labels = frozenset({("site", site)})
            assert after["ccat_buffering_committed_total"] == {labels: 3.0}
            assert after["ccat_buffering_dead_lettered_total"] == {labels: 1.0}
            assert after["ccat_buffering_dead_letters"] == {labels: 1.0}
            service_metrics = samples(await scrape(http, "/metrics"))
            assert "ccat_buffering_committed_total" not in service_metrics
            submits = service_metrics["ccat_buffering_service_submits_total"]
            assert submits[frozenset({("site", site), ("state", "buffered")})] == 4.0
            # One read: the finish's base (the row as the site sees it) is read at submit.
            assert service_metrics["ccat_buffering_service_reads_total"] == {labels: 1.0}
            waits = service_metrics["ccat_buffering_service_waits_total"]
            assert waits[frozenset({("site", site), ("outcome", "timeout")})] == 2.0
            assert waits[frozenset({("site", site), ("outcome", "failed")})] == 1.0

            # Every alert of the runbook evaluates against the worker's real series.
            scrapes = Scrapes(before, after, time.monotonic() - started_at)
            scrapes.after["up"] = {frozenset({("job", "ccat-buffering-worker")}): 1.0}
            fired: dict[str, set[frozenset[tuple[str, str]]]] = {}
            for expression in alert_expressions():
                for name in metrics_of(expression):
                    if name != "up":
                        assert labels in after[name], f"{name} has no series for the site"
                fired[expression] = set(evaluate(expression, scrapes))
            not_draining = (
                "ccat_buffering_queue_depth > 0 and rate(ccat_buffering_committed_total[5m]) == 0"
            )
            assert fired == {
                "ccat_buffering_dead_letters > 0": {labels},
                "ccat_buffering_replication_pending > 0": set(),
                not_draining: set(),
                'up{job="ccat-buffering-worker"} == 0': set(),
            }
            # Before the worker drained, the not-draining alert held (depth 4, no commits).
            stalled = Scrapes(before, before, 1.0)
            stalled.before["ccat_buffering_queue_depth"] = {labels: 4.0}
            stalled.after["ccat_buffering_queue_depth"] = {labels: 4.0}
            assert set(evaluate(alert_expressions()[2], stalled)) == {labels}
        finally:
            for process in reversed(processes):
                process.stop()
            for link in links:
                await link.stop()
            await forget_site(redis, f"site:{{{site}}}:*")
            await redis.aclose()  # type: ignore[attr-defined]

    # Log lines that stand on their own: time, level, site and transaction, under uvicorn.
    mine = [m for line in service.lines() if (m := LINE.match(line)) and m["tx"] == first]
    assert mine and all(m["site"] == site for m in mine), service.lines()
    assert any(m["message"] == "submitted: buffered" for m in mine)
    dead = [line for line in worker.lines() if f"tx={poison_id}" in line]
    parsed = [LINE.match(line) for line in dead]
    assert dead and all(m is not None and m["site"] == site for m in parsed), dead
    library = [line for line in service.lines() if "ccat_buffering" in line]
    assert library and all(LINE.match(line) for line in library), library


async def _is(value: Any, wanted: str) -> bool:
    return await value == wanted
