"""Main databases for the several-writers tests: SQLite and PostgreSQL through both drivers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from pg import fresh_database

from support import sqlite_url


@pytest_asyncio.fixture(params=["sqlite", "asyncpg", "psycopg"])
async def main_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh main database: SQLite, then PostgreSQL by asyncpg and by psycopg (pipelined)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    async with fresh_database() as url:
        driver = "postgresql+psycopg" if request.param == "psycopg" else "postgresql+asyncpg"
        yield driver + url[url.index("://") :]
