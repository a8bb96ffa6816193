"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from pg import fresh_database
from servers import Replicated, streaming_replica
from services import redis_client as _redis_client
from services import started

from support import Site, example_site, sqlite_url

# The buffer watch keeps its sightings on the host's disk: never in the home
# directory of whoever runs the tests (workers started as processes inherit it).
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="ccat-test-state-")


@pytest.fixture(scope="session")
def replicated() -> Iterator[Replicated]:
    """A PostgreSQL primary and its streaming replica, started once for the whole run.

    Every test that uses them makes a database of its own on the primary (and a
    test that pauses the replica's replay resumes it in its teardown): a fresh
    pair per module cost an ``initdb`` and a ``pg_basebackup`` each, four times.
    """
    with started(streaming_replica()) as servers:
        yield servers


@pytest_asyncio.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    """A client of the test Redis (db 15 by default); skips or fails without one."""
    client = await _redis_client()
    yield client  # type: ignore[misc]
    await client.aclose()  # type: ignore[attr-defined]


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh main database: a SQLite file, then a PostgreSQL database (skips without one)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
    else:
        async with fresh_database() as url:
            yield url


@pytest_asyncio.fixture
async def db_site(database_url: str) -> AsyncIterator[Site]:
    """The example site (memory backend, fake clock) over each main database in turn.

    For tests that hold on SQLite and PostgreSQL alike; a test of one database's
    behaviour builds its site with ``support.example_site(url)`` instead.
    """
    async with example_site(database_url) as site:
        yield site
