"""Real services for the tests: found, or started on loopback, or skipped.

A test that needs a service skips with the reason when it is missing, except
under ``CCAT_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

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


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, also: int | None = None) -> int:
    """A free loopback port; with ``also``, port + also must be free too (cluster bus)."""
    import random

    for _ in range(1000):
        port = random.randint(20000, 45000)
        if _bindable(port) and (also is None or _bindable(port + also)):
            return port
    raise RuntimeError("no free loopback port")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout} s")
        time.sleep(0.05)


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[int]]:
    """Start a Redis Cluster of ``masters`` nodes on free loopback ports; stop it after."""
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if server is None or cli is None:
        missing("redis-server and redis-cli are needed to start a Redis Cluster")
    assert server is not None and cli is not None
    workdir = Path(tempfile.mkdtemp(prefix="ccat-cluster-"))
    ports: list[int] = []
    while len(ports) < masters:
        port = free_port(also=10000)  # a node's cluster bus listens on port + 10000
        if port not in ports:
            ports.append(port)
    processes = []
    try:
        for port in ports:
            node = workdir / str(port)
            node.mkdir()
            processes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            wait_for(lambda p=port: port_open("127.0.0.1", p), f"redis node {port}")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def converged() -> bool:
            out = subprocess.run(
                [cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True, text=True
            ).stdout
            return "cluster_state:ok" in out

        wait_for(converged, "redis cluster state ok")
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)
