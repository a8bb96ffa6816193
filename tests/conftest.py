"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis
from services import redis_client as _redis_client


@pytest_asyncio.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    """A client of the test Redis (db 15 by default); skips or fails without one."""
    client = await _redis_client()
    yield client  # type: ignore[misc]
    await client.aclose()  # type: ignore[attr-defined]
