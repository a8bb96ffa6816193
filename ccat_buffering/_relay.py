"""A loopback TCP relay that can be cut and restored, as a link goes down and up.

``simulate`` sends its database connections through one so that the outage
it simulates is a real one: while cut, connections are refused and those
open are reset, exactly as a dropped link would do to them.
"""

from __future__ import annotations

import asyncio
import socket

__all__ = ["LoopbackRelay"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopbackRelay:
    """Forwards ``127.0.0.1:<port>`` to a target while it is up.

    Args:
        host: The target's host.
        port: The target's port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = _free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))

    @property
    def up(self) -> bool:
        """Whether the relay is forwarding."""
        return self._server is not None

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
