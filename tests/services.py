"""Real services for the tests: found, or started on loopback, or skipped.

A test that needs a service skips with the reason when it is missing, except
under ``CCAT_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

import pytest

from ccat_buffering._relay import LoopbackRelay
from ccat_buffering.testing.servers import ServiceMissing

T = TypeVar("T")

REDIS_URL = os.environ.get("CCAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "CCAT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


def required() -> bool:
    return os.environ.get("CCAT_REQUIRE_SERVICES") == "1"


def missing(reason: str) -> None:
    """Skip the test, or fail it when services are required."""
    if required():
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


@contextmanager
def started(servers: AbstractContextManager[T]) -> Iterator[T]:
    """Enter a throwaway-server context, turning what the machine lacks into ``missing``."""
    try:
        value = servers.__enter__()
    except ServiceMissing as exc:
        missing(str(exc))
        raise
    try:
        yield value
    finally:
        servers.__exit__(None, None, None)


def TcpProxy(host: str, port: int) -> LoopbackRelay:
    """A loopback relay to ``host:port`` that a test cuts and restores."""
    return LoopbackRelay(host, port)


def postgres_admin_url() -> str:
    return POSTGRES_URL
