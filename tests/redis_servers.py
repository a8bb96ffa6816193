"""A throwaway ``redis-server`` on a free loopback port: fill it, kill it, stop it, restart it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import redis

from ccat_buffering.testing.servers import ServiceMissing, free_port, port_open, wait_for


class ThrowawayRedis:
    """One Redis server; ``extra`` are its command-line options (``--maxmemory 2mb`` ...)."""

    def __init__(self, *extra: str) -> None:
        self.binary = shutil.which("redis-server")
        self.extra = extra
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ccat-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> ThrowawayRedis:
        if self.binary is None:
            raise ServiceMissing("redis-server is needed to start a throwaway Redis")
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if "--appendonly" not in self.extra:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [*args, "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open("127.0.0.1", self.port), f"redis on {self.port}")
        wait_for(self._loaded, f"redis on {self.port} loaded")
        return self

    def _loaded(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.exceptions.BusyLoadingError:
            return False

    def kill9(self) -> None:
        """Kill the server as a crash would: no shutdown, no save."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])

    def __enter__(self) -> ThrowawayRedis:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
