"""A real outage of the main database for ``simulate``, and its end."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

from ccat_buffering.demo._relay import LoopbackRelay

__all__ = ["Outage"]


class Outage:
    """Makes the main database unreachable for real, and reachable again.

    A SQLite file's directory is renamed away; a networked database is reached
    through a loopback relay that is cut. Anything else has no outage.
    """

    def __init__(self, database_url: str | None, workdir: Path) -> None:
        self.online = workdir / "main"
        self.offline = workdir / "main-unreachable"
        self.relay: LoopbackRelay | None = None
        self.direct_url = database_url or f"sqlite+aiosqlite:///{self.online / 'operations.db'}"
        self.site_url = self.direct_url
        self.kind = "none"
        if database_url is None:
            self.online.mkdir()
            self.kind = "database file moved away"
            return
        url = make_url(database_url)
        if url.host:
            default_port = {"postgresql": 5432, "mysql": 3306}.get(url.get_backend_name(), 5432)
            self.relay = LoopbackRelay(url.host, url.port or default_port)
            self.site_url = url.set(host="127.0.0.1", port=self.relay.port).render_as_string(
                hide_password=False
            )
            self.kind = "link to the database cut"

    async def begin(self) -> None:
        if self.relay is not None:
            await self.relay.start()

    async def cut(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
        elif self.kind != "none":
            os.rename(self.online, self.offline)

    async def restore(self) -> None:
        if self.relay is not None:
            await self.relay.start()
        elif self.kind != "none":
            os.rename(self.offline, self.online)

    async def end(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
