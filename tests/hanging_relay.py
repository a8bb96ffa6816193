"""A loopback TCP relay that can drop every packet, as a long-haul link that hangs.

While it hangs, nothing is forwarded and nothing is reset: bytes sent either
way vanish, and new connections are accepted but never reach the target, so a
client waits for answers that never come, as it does when a link drops
packets without a reset.
"""

from __future__ import annotations

import asyncio
import socket


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HangingRelay:
    """Forwards ``127.0.0.1:<port>`` to a target until :meth:`hang`."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = _free_port()
        self.hanging = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.hanging:
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.hanging:
                # The handshake "reached" a host that never answers: hold it open.
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass  # stopped, or the client went away

    def hang(self) -> None:
        """Drop every byte from now on, resetting nothing."""
        self.hanging = True

    def resume(self) -> None:
        """Forward again (connections that lost bytes stay broken; new ones work)."""
        self.hanging = False

    async def start(self) -> None:
        """Listen on the relay's port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
