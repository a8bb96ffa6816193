"""Least privilege on a real Redis: each role runs as an ACL user with only its rights.

Users get unique names on the test Redis and are deleted afterwards. Each
role's work must succeed with :data:`ccat_buffering_redis.acl.ROLES` and no
more; what a role may not do is refused with the command named; a wrong
password reads "authentication failed"; a refused ``INFO`` or ``TIME`` is named.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis_servers import redis_cluster, redis_sentinel
from services import REDIS_URL, forget_site, started
from typer.testing import CliRunner

from ccat_buffering.cli import app
from ccat_buffering.config.backends import open_backend
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.errors import BackendError, BackendUnavailableError
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_redis.acl import ROLES, sentinel_setuser, setuser

from support import make_schema, observation

DOCS = Path(__file__).parents[2] / "docs" / "redis.rst"

Users = Callable[..., Awaitable[str]]


def _url(user: str, password: str) -> str:
    scheme, rest = REDIS_URL.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.rsplit('@', 1)[-1]}"


@pytest_asyncio.fixture
async def users(redis_client: aioredis.Redis) -> AsyncIterator[Users]:
    """Make ACL users with unique names (``users(role, site, without=...)`` -> URL); delete them."""
    made: list[str] = []

    async def make(role: str, site: str, *, without: tuple[str, ...] = ()) -> str:
        user = f"ccat-test-{uuid.uuid4().hex[:10]}-{role}"
        password = uuid.uuid4().hex
        args = [a for a in setuser(role, site, user, password) if a[1:] not in without]
        await redis_client.execute_command("ACL", "SETUSER", *args)
        made.append(user)
        return _url(user, password)

    yield make
    for user in made:
        await redis_client.execute_command("ACL", "DELUSER", user)


@pytest_asyncio.fixture
async def database(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/main.db"
    engine = create_engine(url)
    await make_schema(engine)
    await TransactionExecutor(engine, ModelRegistry.from_base(Base)).create_ledger()
    await engine.dispose()
    return url


def _site(site: str, backend_url: str, database_url: str) -> BufferingCoordinator:
    settings = BufferingSettings(site_name=site, backend_url=backend_url, database_url=database_url)
    return BufferingCoordinator.from_settings(
        settings, registry=ModelRegistry.from_base(Base), start=False
    )


async def test_each_role_works_with_only_its_acl(
    users: Users, database: str, redis_client: aioredis.Redis
) -> None:
    site_name = new_site_name()
    service_url = await users("service", site_name)
    worker_url = await users("worker", site_name)
    status_url = await users("status", site_name)
    try:
        # The service buffers, reads its writes back and serves health ...
        service = _site(site_name, service_url, database)
        ids = []
        for i in range(5):
            tx, obs_id = observation(i)
            ids.append((await service.submit(tx)).transaction_id)
        assert await service.reads.get(ExecutedObsUnit, obs_id) is not None
        health = await service.health()
        assert health.buffer.depth == 5
        # ... and cannot drain: the refused command is named.
        with pytest.raises(BackendError, match="refused the RPOP command") as refused:
            await service.backend.buffer.claim(1, 60)
        assert "Redis ACL" in str(refused.value)
        await service.aclose()

        worker = _site(site_name, worker_url, database)
        await worker.backend.buffer.push(["{unreadable"])  # dead-lettered by the drain
        worker.start()
        deadline = time.monotonic() + 20
        while True:
            statuses = await worker.backend.status.get_many(ids)
            if all(s is not None and s.state is TransactionState.REPLICATED for s in statuses):
                break
            assert time.monotonic() < deadline, statuses
            await asyncio.sleep(0.05)
        assert (await worker.backend.buffer.stats()).dead_letters == 1
        await worker.aclose()

        env = {
            "CCAT_BUFFERING_SITE_NAME": site_name,
            "CCAT_BUFFERING_BACKEND_URL": status_url,
            "CCAT_BUFFERING_DATABASE_URL": database,
        }
        for args in (
            ["status", "--json"],
            ["inspect", ids[0], "--json"],
            ["dlq", "list", "--json"],
            ["keys", "audit", "--json"],
            ["audit", "--json"],
        ):
            result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
            assert result.exit_code in (0, 1), (args, result.output)
            json.loads(result.stdout)
        refused_purge = await asyncio.to_thread(
            CliRunner().invoke, app, ["dlq", "purge", "--all", "--yes"], env=env
        )
        assert refused_purge.exit_code == 1 and "refused the HDEL command" in refused_purge.output
    finally:
        await forget_site(redis_client, f"site:{{{site_name}}}:*")


async def test_a_service_without_functions_buffers_through_the_script(
    users: Users, redis_client: aioredis.Redis
) -> None:
    """Without ``+fcall +function|load``, the write path runs as a script (EVALSHA)."""
    site_name = new_site_name()
    url = await users("service", site_name, without=("fcall", "function|load"))
    backend = open_backend(url, site=site_name)
    try:
        await backend.buffer.push(["one", "two"])
        assert (await backend.buffer.stats()).depth == 2
        assert backend._functions["apply"].usable is False  # type: ignore[attr-defined]
    finally:
        await backend.aclose()
        await forget_site(redis_client, f"site:{{{site_name}}}:*")


async def test_a_user_of_another_site_is_refused_its_keys(
    users: Users, redis_client: aioredis.Redis
) -> None:
    url = await users("worker", new_site_name())
    backend = open_backend(url, site=new_site_name())
    with pytest.raises(BackendError, match="a key outside this user's key patterns"):
        await backend.buffer.stats()
    await backend.aclose()


async def test_a_wrong_password_says_authentication_failed(users: Users) -> None:
    url = await users("worker", new_site_name())
    wrong = url.replace("@", "x@", 1)
    backend = open_backend(wrong, site=new_site_name())
    with pytest.raises(BackendError) as failed:
        await backend.buffer.stats()
    await backend.aclose()
    assert "authentication failed" in str(failed.value)
    assert "cannot be reached" not in str(failed.value)
    assert not isinstance(failed.value, BackendUnavailableError)
    env = {"CCAT_BUFFERING_SITE_NAME": "s", "CCAT_BUFFERING_BACKEND_URL": wrong}
    result = await asyncio.to_thread(CliRunner().invoke, app, ["dlq", "list"], env=env)
    assert "authentication failed" in result.output and "cannot be reached" not in result.output


async def test_a_refused_info_is_a_warning_and_a_refused_time_is_named(
    users: Users, redis_client: aioredis.Redis
) -> None:
    site_name = new_site_name()
    no_info = await users("worker", site_name, without=("info",))
    backend = open_backend(no_info, site=site_name)
    try:
        warnings = await backend.buffer_warnings()  # type: ignore[attr-defined]
        assert any("memory of the buffer cannot be read" in w and "INFO" in w for w in warnings)
    finally:
        await backend.aclose()
    no_time = await users("worker", site_name, without=("time",))
    backend = open_backend(no_time, site=site_name)
    try:
        with pytest.raises(BackendError, match="refused the TIME command"):
            await backend.buffer.stats()
    finally:
        await backend.aclose()
        await forget_site(redis_client, f"site:{{{site_name}}}:*")


def test_the_docs_show_each_roles_acl() -> None:
    text = " ".join(DOCS.read_text(encoding="utf-8").split())
    lines = [setuser(role, "obs", f"ccat-obs-{role}") for role in ROLES]
    for args in [*lines, sentinel_setuser("ccat-obs-worker")]:
        line = "ACL SETUSER " + " ".join(args)
        assert line in text, f"docs/redis.rst lacks: {line}"


async def test_the_worker_acl_works_on_a_cluster() -> None:
    """A Cluster client maps the slots first: the role's rights include what that needs."""
    with started(redis_cluster()) as ports:
        for port in ports:  # ACL users are per node
            admin = aioredis.Redis(port=port)
            await admin.execute_command("ACL", "SETUSER", *setuser("worker", "obs", "w", "pw"))
            await admin.aclose()
        url = "redis+cluster://w:pw@" + ",".join(f"127.0.0.1:{port}" for port in ports)
        backend = open_backend(url, site="obs")
        try:
            deadline = time.monotonic() + 15
            while True:  # every node agrees on the slots (the fixture waits for one)
                try:
                    await backend.buffer.stats()
                    break
                except BackendUnavailableError:
                    assert time.monotonic() < deadline, "the cluster never came up"
                    await asyncio.sleep(0.1)
            await backend.buffer.push(["{}"])
            (claim,) = await backend.buffer.claim(1, 60)
            assert await backend.buffer.ack([claim.receipt]) == 1
            assert (await backend.buffer.stats()).depth == 0
            assert not any("could not be checked" in w for w in await backend.buffer_warnings())  # type: ignore[attr-defined]
        finally:
            await backend.aclose()


async def test_behind_sentinels_the_user_needs_only_to_find_the_master_there() -> None:
    with started(redis_sentinel()) as servers:
        for port in (servers["master"], servers["replica"]):
            admin = aioredis.Redis(port=int(str(port)))
            await admin.execute_command("ACL", "SETUSER", *setuser("worker", "obs", "w", "pw"))
            await admin.aclose()
        url = f"redis+sentinel://w:pw@127.0.0.1:{servers['sentinel']}/site-buffer"
        backend = open_backend(url, site="obs")
        with pytest.raises(BackendError, match=r"\(its sentinels\): authentication failed"):
            await backend.buffer.stats()  # the sentinel does not know the user yet
        await backend.aclose()
        sentinel = aioredis.Redis(port=int(str(servers["sentinel"])))
        await sentinel.execute_command("ACL", "SETUSER", *sentinel_setuser("w", "pw"))
        await sentinel.aclose()
        # min_replicas: the buffering write waits for the replica (WAIT) as this user.
        backend = open_backend(url + "?min_replicas=1&min_replicas_timeout=5", site="obs")
        try:
            async with backend.atomic() as batch:
                batch.push("{}")
            assert (await backend.buffer.stats()).depth == 1
        finally:
            await backend.aclose()
