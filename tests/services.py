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

from ccat_buffering._relay import LoopbackRelay

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


def _redis_server(port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    if server is None:
        missing("redis-server is needed to start a throwaway Redis")
    assert server is not None
    return subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextmanager
def redis_sentinel() -> Iterator[dict[str, object]]:
    """A master, a replica and one sentinel watching them, on loopback; stopped after.

    Yields ``master``, ``replica`` and ``sentinel`` ports, and ``kill_master()``.
    """
    workdir = Path(tempfile.mkdtemp(prefix="ccat-sentinel-"))
    master, replica, sentinel = (free_port() for _ in range(3))
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        processes["master"] = _redis_server(master, workdir)
        wait_for(lambda: port_open("127.0.0.1", master), "redis master")
        processes["replica"] = _redis_server(
            replica, workdir, "--replicaof", "127.0.0.1", str(master)
        )
        wait_for(lambda: port_open("127.0.0.1", replica), "redis replica")
        config = workdir / "sentinel.conf"
        config.write_text(
            f"port {sentinel}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor site-buffer 127.0.0.1 {master} 1\n"
            "sentinel down-after-milliseconds site-buffer 1000\n"
            "sentinel failover-timeout site-buffer 5000\n"
        )
        processes["sentinel"] = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open("127.0.0.1", sentinel), "redis sentinel")

        def kill_master() -> None:
            processes["master"].kill()
            processes["master"].wait(5)

        yield {
            "master": master,
            "replica": replica,
            "sentinel": sentinel,
            "kill_master": kill_master,
        }
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def TcpProxy(host: str, port: int) -> LoopbackRelay:
    """A loopback relay to ``host:port`` that a test cuts and restores."""
    return LoopbackRelay(host, port)


def postgres_admin_url() -> str:
    return POSTGRES_URL
