"""Waiting for a transaction's state: one shared poller per site and process.

A caller that must know its write is visible (``committed`` on the main
database, or ``replicated`` to the site's replica) awaits
:meth:`BufferingCoordinator.wait <ccat_buffering.BufferingCoordinator.wait>`
or follows its changes with :meth:`StatusWatch.follow`, instead of polling.

However many callers wait, the stores are read by one task per process: it
reads every waited-for status in one ``get_many`` (one ``MGET`` on Redis)
per ``interval``, in slices of :data:`SLICE` ids, and hands each waiter the
status it asked about. Waits that begin between two reads are answered at
once by one more read of their ids only (a thousand waits opened together
cost one ``MGET``, not a thousand reads), so a wait whose state is
reached already, or whose transaction is unknown, answers at once. So ``n``
waiters cost the buffer ``ceil(n / SLICE) / interval`` commands per second
while they wait, plus one command per burst of new waits. The task ends
when the last waiter leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Literal

from ccat_buffering.buffer.protocols import StatusStore
from ccat_buffering.drain._stopping import finish_or_cancel, raise_if_cancelling
from ccat_buffering.errors import (
    BufferingError,
    TransactionFailedError,
    UnknownTransactionError,
    WaitTimeoutError,
)
from ccat_buffering.write.status import TransactionState, TransactionStatus

__all__ = ["SLICE", "StatusWatch", "Until", "reached"]

SLICE = 1000
"""Ids read by one ``get_many`` of the shared poller."""

Until = Literal["committed", "replicated"]


def reached(status: TransactionStatus, until: Until) -> bool:
    """Whether ``status`` is at ``until`` or past it.

    Args:
        status: A transaction's status.
        until: ``committed`` (on the main database) or ``replicated`` (visible
            on the site's replica).
    """
    if until == "committed":
        return status.state in (TransactionState.COMMITTED, TransactionState.REPLICATED)
    return status.state is TransactionState.REPLICATED


class _Waiter:
    """One caller's view: the newest status read for its transaction."""

    def __init__(self) -> None:
        self.status: TransactionStatus | None = None
        self.read = asyncio.Event()


class StatusWatch:
    """The shared poller of one site's statuses in one process.

    Args:
        store: The site's status store.
        interval: Seconds between reads while anyone waits.
        clock: Monotonic seconds, for timeouts.
    """

    def __init__(
        self,
        store: StatusStore,
        interval: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        self._waiters: dict[str, set[_Waiter]] = {}
        self._task: asyncio.Task[None] | None = None
        self._fresh: set[str] = set()
        self._wake = asyncio.Event()
        self.reads = 0
        """Reads of the store made by the poller (``get_many`` calls), for benchmarks."""
        self._clock = clock

    @property
    def waiting(self) -> int:
        """Callers waiting now."""
        return sum(len(w) for w in self._waiters.values())

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def _read(self, ids: list[str]) -> None:
        for start in range(0, len(ids), SLICE):
            chunk = ids[start : start + SLICE]
            self.reads += 1
            try:
                statuses = await self.store.get_many(chunk)
            except BufferingError:
                # The buffer is unreachable for now: waiters keep their last
                # status and time out with it if it stays away.
                raise_if_cancelling()
                continue
            for tx_id, status in zip(chunk, statuses, strict=True):
                for waiter in self._waiters.get(tx_id, ()):
                    waiter.status = status
                    waiter.read.set()

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiters:
            due = loop.time() + self.interval
            self._fresh.clear()
            self._wake.clear()
            await self._read(list(self._waiters))
            while self._waiters and (left := due - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
                # Waits that began since the last read are answered at once, all
                # of them in one read, not each by its own.
                fresh = [i for i in self._fresh if i in self._waiters]
                self._fresh.clear()
                self._wake.clear()
                if fresh:
                    await self._read(fresh)

    @contextlib.contextmanager
    def _joined(self, transaction_id: str, waiter: _Waiter) -> Iterator[_Waiter]:
        self._waiters.setdefault(transaction_id, set()).add(waiter)
        self._fresh.add(transaction_id)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll(), name="status-watch")
        try:
            yield waiter
        finally:
            waiters = self._waiters.get(transaction_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[transaction_id]

    async def follow(
        self, transaction_id: str, *, timeout: float | None = None
    ) -> AsyncGenerator[TransactionStatus]:
        """Each new state of a transaction, from the current one until it is terminal.

        Args:
            transaction_id: The transaction.
            timeout: Stop following after this many seconds (``None``: never).

        Yields:
            The status now, then once per change of state (or of attempts or error).

        Raises:
            UnknownTransactionError: No status for it.
        """
        deadline = math.inf if timeout is None else self._now() + timeout
        seen: tuple[str, int, str | None] | None = None
        waiter = _Waiter()
        with self._joined(transaction_id, waiter):
            while (left := deadline - self._now()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.read.wait(), None if math.isinf(left) else left)
                if not waiter.read.is_set():
                    continue
                waiter.read.clear()
                now = waiter.status
                if now is None and seen is None:
                    raise UnknownTransactionError(
                        f"no transaction {transaction_id!r} "
                        "(never submitted here, or its status expired)"
                    )
                if now is None or _shown(now) == seen:
                    continue
                seen = _shown(now)
                yield now
                if now.state.is_terminal:
                    return

    async def wait(
        self, transaction_id: str, until: Until = "committed", timeout: float = 30.0
    ) -> TransactionStatus:
        """Return once the transaction is at ``until`` or past it.

        Args:
            transaction_id: The transaction.
            until: ``committed`` or ``replicated``.
            timeout: Seconds to wait at most.

        Returns:
            Its status, at ``until`` or past it.

        Raises:
            WaitTimeoutError: Not reached in time (its ``status`` is the last known).
            TransactionFailedError: It was dead-lettered, or is held as a conflict
                (its ``status`` says why).
            UnknownTransactionError: No status for it.
            ValueError: ``until`` is neither ``committed`` nor ``replicated``.
        """
        if until not in ("committed", "replicated"):
            raise ValueError(f"until must be 'committed' or 'replicated', not {until!r}")
        last: TransactionStatus | None = None
        # aclosing: leaving the loop early must unregister the waiter now, not at GC.
        async with contextlib.aclosing(self.follow(transaction_id, timeout=timeout)) as changes:
            async for status in changes:
                last = status
                if reached(status, until):
                    return status
                if status.state is TransactionState.FAILED:
                    raise TransactionFailedError(
                        f"transaction {transaction_id} was dead-lettered: {status.last_error}",
                        status,
                    )
                if status.state is TransactionState.CONFLICTED:
                    # Not applied until an operator resolves it: waiting longer cannot help.
                    raise TransactionFailedError(
                        f"transaction {transaction_id} is held as a conflict: {status.last_error}",
                        status,
                    )
        state = "unknown" if last is None else str(last.state)
        raise WaitTimeoutError(
            f"transaction {transaction_id} not {until} within {timeout:g} s (it is {state})",
            last,
        )

    async def aclose(self) -> None:
        """Stop the poller (waiters still waiting time out)."""
        if self._task is not None:
            await finish_or_cancel(self._task)  # cancels again if a Redis call ate one
            self._task = None


def _shown(status: TransactionStatus) -> tuple[str, int, str | None]:
    return (str(status.state), status.attempts, status.last_error)
