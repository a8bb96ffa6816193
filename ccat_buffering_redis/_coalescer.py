"""Coalescing: the groups that concurrent callers close together go in one ``APPLY`` call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ccat_buffering.errors import BackendError
from ccat_buffering_redis._frame import Command

__all__ = ["MAX_GROUPS_PER_CALL", "MAX_IN_FLIGHT", "Coalescer"]

MAX_GROUPS_PER_CALL = 256
MAX_IN_FLIGHT = 2


class Coalescer:
    """Sends the groups that callers close together in one script call.

    A caller that finds the coalescer idle sends its group at once. Otherwise
    its group waits until the event loop's current turn ends, so that the
    groups of callers woken together (by the reply to the last call, say) go
    in one call. Up to ``MAX_IN_FLIGHT`` calls run at a time, so that preparing the
    next call overlaps Redis running the last; groups that arrive while every
    slot is busy wait and go together in the next call. Each group still
    applies whole; its result or error reaches its own caller, who awaits it,
    so each caller's groups apply in the order it closed them. A caller
    cancelled before its group was sent has its group dropped, unwritten.
    """

    def __init__(
        self, run: Callable[[list[list[Command]]], Awaitable[list[int | BackendError]]]
    ) -> None:
        self._run = run
        self._pending: list[tuple[list[Command], asyncio.Future[int]]] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, ops: list[Command]) -> int:
        loop = asyncio.get_running_loop()
        if not (self._in_flight or self._pending or self._scheduled):
            # Nobody else is writing: send at once, without the wait for company.
            self._in_flight += 1
            try:
                (result,) = await self._run([ops])
            finally:
                self._in_flight -= 1
                if self._pending:
                    self._schedule(loop)
            if isinstance(result, BackendError):
                raise result
            return result
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append((ops, future))
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        self._pending = [entry for entry in self._pending if not entry[1].done()]
        while self._pending and self._in_flight < MAX_IN_FLIGHT:
            # Share what waits among the free slots: while Redis runs one call,
            # the callers of the other, answered first, prepare their next groups.
            share = -(-len(self._pending) // (MAX_IN_FLIGHT - self._in_flight))
            size = min(share, MAX_GROUPS_PER_CALL)
            batch = self._pending[:size]
            del self._pending[:size]
            self._in_flight += 1
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[list[Command], asyncio.Future[int]]]) -> None:
        # A caller may have been cancelled since its group was handed to this task.
        batch = [entry for entry in batch if not entry[1].done()]
        try:
            results = await self._run([ops for ops, _ in batch]) if batch else []
        except BaseException as exc:
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BackendError):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            if self._pending:
                self._schedule(asyncio.get_running_loop())
