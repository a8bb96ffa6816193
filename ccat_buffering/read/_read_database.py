"""The database side of reads: bounded statements, a timeout, and what counts as an outage."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ccat_buffering.buffer.retry import FailureKind, classify_failure, describe_error
from ccat_buffering.errors import DatabaseUnavailableError
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["KEY_PARAMETERS", "ReadDatabase"]

KEY_PARAMETERS = 900
"""Bound parameters per key-list statement: under SQLite's old limit of 999
(asyncpg allows 32,767), so one statement never fails for its length."""

T = TypeVar("T")
Row = dict[str, Any]


def is_outage(exc: BaseException) -> bool:
    """Whether a read's error means the database cannot be read (not a bad statement)."""
    # A statement the driver refuses (too many parameters, a value of the
    # wrong type) is the caller's error, even where the driver calls it an
    # interface error: only a connection that failed is an outage.
    if isinstance(exc, sa_exc.InterfaceError) and not exc.connection_invalidated:
        return False
    if isinstance(exc, sa_exc.OperationalError) and exc.orig is not None:
        text = str(exc.orig).lower()
        if "no such" in text or "syntax error" in text:
            return False  # SQLite reports schema errors as operational ones
    return classify_failure(exc) is FailureKind.OUTAGE


class ReadDatabase:
    """Statements of reads on one engine, each call within a timeout.

    Args:
        engine: The database reads come from.
        registry: Mapped classes.
        timeout: Seconds a call may take, connecting included.
    """

    def __init__(self, engine: AsyncEngine, registry: ModelRegistry, timeout: float) -> None:
        self.engine = engine
        self.registry = registry
        self.timeout = timeout
        self._abandoned: set[asyncio.Future[Any]] = set()

    async def select(
        self, conn: AsyncConnection, model: str, names: Sequence[str], conditions: Sequence[Any]
    ) -> list[Row]:
        """Rows of ``model`` meeting ``conditions``, as mappings of ``names``."""
        cls = self.registry.model(model)
        statement = select(*(getattr(cls, name) for name in names)).where(*conditions)
        result = await conn.execute(statement)
        return [dict(zip(names, row, strict=True)) for row in result]

    async def by_keys(
        self,
        conn: AsyncConnection,
        model: str,
        names: Sequence[str],
        keys: Sequence[tuple[Any, ...]],
    ) -> list[Row]:
        """Rows of ``model`` by key values, in slices of :data:`KEY_PARAMETERS` parameters."""
        cls = self.registry.model(model)
        key_fields = self.registry.key_fields(model)
        step = max(1, KEY_PARAMETERS // len(key_fields))
        rows: list[Row] = []
        for start in range(0, len(keys), step):
            chunk = keys[start : start + step]
            if len(key_fields) == 1:
                condition = getattr(cls, key_fields[0]).in_([k[0] for k in chunk])
            else:
                columns = tuple_(*(getattr(cls, name) for name in key_fields))
                condition = columns.in_([tuple(k) for k in chunk])
            rows += await self.select(conn, model, names, [condition])
        return rows

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work(conn)`` on a connection, answering within the timeout.

        Connecting, the statements and handing the connection back all count
        against the timeout: a link that drops packets answers none of them.
        A call that runs out of time is cancelled in the background (the
        driver may take a while to give it up) and its connection discarded.

        Raises:
            DatabaseUnavailableError: The database did not answer in time or
                cannot be reached.
        """
        task = asyncio.ensure_future(self._on_connection(work))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if not done:
            self._abandon(task)
            raise DatabaseUnavailableError(
                f"the site's database did not answer a read within {self.timeout:g} s "
                "(read_timeout); pass allow_partial=True to answer from the buffer alone"
            )
        try:
            return task.result()
        except Exception as exc:
            if is_outage(exc):
                raise DatabaseUnavailableError(
                    f"the site's database cannot be read ({describe_error(exc)}); pass "
                    "allow_partial=True to answer from the buffer alone"
                ) from exc
            raise

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        task.cancel()
        self._abandoned.add(task)  # held until it is done, so it is not collected
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the read already answered

    async def _on_connection(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        conn = await self.engine.connect()
        try:
            result = await work(conn)
        except BaseException:
            await _discard(conn)
            raise
        await conn.close()
        return result


async def _discard(conn: AsyncConnection) -> None:
    # The connection failed or hangs: drop it without a round trip (handing it
    # back would roll it back over the link), so the pool opens a new one.
    try:
        await conn.invalidate()
        await conn.close()
    except Exception:
        pass
