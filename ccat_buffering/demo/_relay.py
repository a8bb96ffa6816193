"""A loopback TCP relay that delays, hangs, cuts and restores, as a long-haul link does.

``simulate`` sends its database connections through one so that the outage
it simulates is a real one: while cut, connections are refused and those
open are reset, exactly as a dropped link would do to them. The tests and
``bench/wan_bench.py`` also use it to add a one-way delay (half the round
trip) and to **hang**: bytes are dropped in both directions while every
connection stays open, with no reset, which is how a long-haul link usually
fails. It counts round trips (a reply after a request) and bytes, so that a
benchmark can show what a batch costs on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LinkCounters", "LoopbackRelay"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LinkCounters:
    """What crossed the relay.

    Attributes:
        round_trips: Replies from the target that followed a request (per
            connection, a run of client bytes then a run of target bytes).
        bytes_up: Bytes forwarded to the target.
        bytes_down: Bytes forwarded back to clients.
        connections: Connections accepted.
    """

    round_trips: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    connections: int = 0


class _Flow:
    """One connection's turn-taking, for counting round trips."""

    def __init__(self) -> None:
        self.requested = False


class LoopbackRelay:
    """Forwards ``127.0.0.1:<port>`` to a target while it is up.

    Args:
        host: The target's host.
        port: The target's port.
        delay: Seconds added to each direction (the round trip grows by twice this).
    """

    def __init__(self, host: str, port: int, *, delay: float = 0.0) -> None:
        self.target = (host, port)
        self.port = _free_port()
        self.delay = delay
        self.counters = LinkCounters()
        self.hung = False
        self.hang_when: Callable[[bytes, bool], bool] | None = None
        """Hang from the chunk (data, to the target?) for which this returns true."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            due, data = item
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flow: _Flow,
        upstream: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        try:
            while data := await reader.read(65536):
                if not self.hung and self.hang_when is not None:
                    self.hung = self.hang_when(data, upstream)
                if self.hung:
                    continue  # dropped on the floor; nobody is told
                if upstream:
                    self.counters.bytes_up += len(data)
                    flow.requested = True
                else:
                    self.counters.bytes_down += len(data)
                    if flow.requested:
                        self.counters.round_trips += 1
                        flow.requested = False
                queue.put_nowait((loop.time() + self.delay, data))
                if sender.done():
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(ConnectionError, OSError):
                await sender
            if not self.hung:
                # A hung link carries no FIN either: the far end never learns
                # that this side gave up (until stop() resets everything).
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.counters.connections += 1
        self._writers.update((writer, up_writer))
        flow = _Flow()
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, flow, True),
                self._pipe(up_reader, writer, flow, False),
            )
        finally:
            self._writers.difference_update((writer, up_writer))

    def hang(self) -> None:
        """Drop every byte from now on, keeping connections open and accepting new ones."""
        self.hung = True

    def answer(self) -> None:
        """Forward again after :meth:`hang` (bytes dropped meanwhile are gone)."""
        self.hung = False

    async def start(self) -> None:
        """Listen (again) on the relay's port."""
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening and reset every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        # Aborted connections end their handlers by themselves; cancelling them
        # would make asyncio's stream callback log the CancelledError.
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2)
