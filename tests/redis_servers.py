"""Throwaway Redis servers on loopback: one to fill, kill, stop and restart; a Cluster; Sentinel."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import redis
from servers import ServiceMissing, free_port, port_open, wait_for
from tls import TLSFiles


def tls_options(port: int, files: TLSFiles) -> tuple[str, ...]:
    """``redis-server`` options serving TLS only on ``port``, client certificates required."""
    return (
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(files.server_cert), "--tls-key-file", str(files.server_key),
        "--tls-ca-cert-file", str(files.ca), "--tls-auth-clients", "yes",
        "--tls-replication", "yes",
    )  # fmt: skip


def tls_cli(files: TLSFiles) -> list[str]:
    """``redis-cli`` options for a server of :func:`tls_options`."""
    return ["--tls", "--cacert", str(files.ca), "--cert", str(files.client_cert),
            "--key", str(files.client_key)]  # fmt: skip


def client_of(port: int, files: TLSFiles | None = None, password: str | None = None) -> redis.Redis:
    """A plain client of a loopback server, over TLS when ``files`` are given."""
    if files is None:
        return redis.Redis(port=port, socket_timeout=2, password=password)
    return redis.Redis(
        port=port, socket_timeout=2, password=password, ssl=True, ssl_ca_certs=str(files.ca),
        ssl_certfile=str(files.client_cert), ssl_keyfile=str(files.client_key),
    )  # fmt: skip


def redis_server(port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A ``redis-server`` on loopback ``port`` in ``workdir``: no snapshots, no AOF unless asked.

    A replica's full sync starts at once (``repl-diskless-sync-delay 0``): by
    default a master waits 5 s for more replicas to share the transfer, and every
    Sentinel set, Cluster with replicas and master restarted as a replica waited it.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceMissing("redis-server is needed to start a throwaway Redis")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--repl-diskless-sync-delay", "0"]
    if "--appendonly" not in extra:
        args += ["--appendonly", "no"]
    return subprocess.Popen(
        [*args, "--dir", str(workdir), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class ThrowawayRedis:
    """One Redis server; ``extra`` are its command-line options (``--maxmemory 2mb`` ...)."""

    def __init__(self, *extra: str, tls: TLSFiles | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.extra = extra if tls is None else (*extra, *tls_options(self.port, tls))
        self.dir = Path(tempfile.mkdtemp(prefix="ccat-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is None:
            return f"redis://127.0.0.1:{self.port}/0"
        return (
            f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
            f"&ssl_certfile={self.tls.client_cert}&ssl_keyfile={self.tls.client_key}"
        )

    def client(self) -> redis.Redis:
        return client_of(self.port, self.tls)

    def start(self) -> ThrowawayRedis:
        self.process = redis_server(self.port, self.dir, *self.extra)
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


@contextmanager
def redis_cluster(
    masters: int = 3,
    tls: TLSFiles | None = None,
    *,
    replicas: int = 0,
    aof: bool = False,
    handles: dict[int, subprocess.Popen[bytes]] | None = None,
) -> Iterator[list[int]]:
    """Start a Redis Cluster of ``masters`` nodes on free loopback ports; stop it after.

    With ``tls``, the nodes serve TLS only (the cluster bus too), client
    certificates required. ``replicas`` per master; ``aof`` runs every node
    with ``appendonly yes`` and ``appendfsync everysec``; ``handles``, when
    given, is filled with each node's process by port (to stop or kill one),
    and a node restarted into it is stopped at the end too.
    """
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if server is None or cli is None:
        raise ServiceMissing("redis-server and redis-cli are needed to start a Redis Cluster")
    assert server is not None and cli is not None
    workdir = Path(tempfile.mkdtemp(prefix="ccat-cluster-"))
    ports: list[int] = []
    while len(ports) < masters * (1 + replicas):
        port = free_port(also=10000)  # a node's cluster bus listens on port + 10000
        if port not in ports:
            ports.append(port)
    processes = {} if handles is None else handles
    try:
        for port in ports:
            node = workdir / str(port)
            node.mkdir()
            processes[port] = redis_server(
                port,
                node,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
                *(("--appendonly", "yes", "--appendfsync", "everysec") if aof else ()),
                *(() if tls is None else (*tls_options(port, tls), "--tls-cluster", "yes")),
            )
        for port in ports:
            wait_for(functools.partial(port_open, "127.0.0.1", port), f"redis node {port}")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
                *([] if tls is None else tls_cli(tls)),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def converged() -> bool:
            out = subprocess.run(
                [
                    cli,
                    "-p",
                    str(ports[0]),
                    *([] if tls is None else tls_cli(tls)),
                    "cluster",
                    "info",
                ],
                capture_output=True,
                text=True,
            ).stdout
            return "cluster_state:ok" in out

        wait_for(converged, "redis cluster state ok")
        yield ports
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def restart_cluster_node(port: int, handles: dict[int, subprocess.Popen[bytes]]) -> None:
    """Start a killed node of :func:`redis_cluster` again, with its own config and data."""
    old = handles[port]
    args = [str(a) for a in old.args]  # type: ignore[union-attr]
    handles[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: port_open("127.0.0.1", port), f"redis node {port} back")


def _linked(port: int, tls: TLSFiles | None = None, password: str | None = None) -> bool:
    try:
        info = client_of(port, tls, password).info("replication")
    except redis.exceptions.RedisError:
        return False
    return info.get("master_link_status") == "up"


@contextmanager
def redis_sentinel(
    sentinels: int = 1,
    *,
    aof: bool = False,
    tls: TLSFiles | None = None,
    password: str | None = None,
) -> Iterator[dict[str, object]]:
    """A master, a replica and ``sentinels`` sentinels watching them, on loopback; stopped after.

    Yields ``master``, ``replica`` and ``sentinel`` ports (``sentinels``: every
    sentinel's), ``kill_master()``, ``restart_master()``, ``master_port()`` (as
    the sentinels say now), and ``pause(role)``/``resume(role)`` for
    ``"master"`` or ``"replica"`` (SIGSTOP/SIGCONT). ``aof`` runs both data
    nodes with ``appendonly yes`` and ``appendfsync everysec``. ``tls``: every
    node and sentinel serves TLS only, client certificates required.
    ``password``: every node and sentinel requires it (``requirepass``).
    """
    workdir = Path(tempfile.mkdtemp(prefix="ccat-sentinel-"))
    master, replica = free_port(), free_port()
    sentinel_ports = [free_port() for _ in range(sentinels)]
    options = ("--appendonly", "yes", "--appendfsync", "everysec") if aof else ()
    if password is not None:
        options += ("--requirepass", password, "--masterauth", password)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for role, port in (("master", master), ("replica", replica)):
            (workdir / role).mkdir()
            extra = ("--replicaof", "127.0.0.1", str(master)) if role == "replica" else ()
            secure = () if tls is None else tls_options(port, tls)
            processes[role] = redis_server(port, workdir / role, *options, *secure, *extra)
            wait_for(lambda port=port: port_open("127.0.0.1", port), f"redis {role}")
        wait_for(lambda: _linked(replica, tls, password), "the replica in sync with its master")
        quorum = sentinels // 2 + 1
        for i in range(sentinels):
            config = workdir / f"sentinel-{i}.conf"
            # A port another process took meanwhile makes the sentinel exit: take another.
            for _attempt in range(3):
                port = sentinel_ports[i]
                secure = (
                    ""
                    if tls is None
                    else f"port 0\ntls-port {port}\ntls-cert-file {tls.server_cert}\n"
                    f"tls-key-file {tls.server_key}\ntls-ca-cert-file {tls.ca}\n"
                    "tls-auth-clients yes\ntls-replication yes\n"
                )
                config.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {workdir}\n{secure}"
                    f"sentinel monitor site-buffer 127.0.0.1 {master} {quorum}\n"
                    "sentinel down-after-milliseconds site-buffer 1000\n"
                    "sentinel failover-timeout site-buffer 5000\n"
                    + (
                        ""
                        if password is None
                        else f"requirepass {password}\nsentinel auth-pass site-buffer {password}\n"
                    )
                )
                process = subprocess.Popen(
                    [shutil.which("redis-server") or "redis-server", str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                processes[f"sentinel-{i}"] = process
                wait_for(
                    lambda port=port, process=process: (
                        port_open("127.0.0.1", port) or process.poll() is not None
                    ),
                    "redis sentinel",
                    timeout=60,  # a busy machine
                )
                if process.poll() is None:
                    break
                sentinel_ports[i] = free_port()
            else:
                raise RuntimeError(f"redis sentinel {i} exited at start three times")

        def kill_master() -> None:
            processes["master"].kill()
            processes["master"].wait(5)

        def restart_master() -> None:
            """Start the killed master again, as it was: Sentinel makes it a replica."""
            secure = () if tls is None else tls_options(master, tls)
            processes["master"] = redis_server(master, workdir / "master", *options, *secure)
            wait_for(lambda: port_open("127.0.0.1", master), "the old master back")

        def master_port() -> int:
            """The master's port, as the first sentinel says now."""
            reply = client_of(sentinel_ports[0], tls, password).execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "site-buffer"
            )
            return int(reply[1])

        def pause(role: str) -> None:
            os.kill(processes[role].pid, signal.SIGSTOP)

        def resume(role: str) -> None:
            os.kill(processes[role].pid, signal.SIGCONT)

        yield {
            "master": master,
            "replica": replica,
            "sentinel": sentinel_ports[0],
            "sentinels": sentinel_ports,
            "kill_master": kill_master,
            "restart_master": restart_master,
            "master_port": master_port,
            "pause": pause,
            "resume": resume,
        }
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def deaf_sentinel(master: int) -> Iterator[int]:
    """A sentinel of ``site-buffer`` at ``master`` that hears no other sentinel; its port.

    Its ``SUBSCRIBE`` and ``PUBLISH`` are renamed away, as a partition would
    cut them: it never learns of a failover the others make and keeps naming
    ``master`` at config-epoch 0 (its quorum of 3 keeps it from failing over alone).
    """
    workdir = Path(tempfile.mkdtemp(prefix="ccat-deaf-sentinel-"))
    port = free_port()
    config = workdir / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor site-buffer 127.0.0.1 {master} 3\n"
        "sentinel rename-command site-buffer SUBSCRIBE DEAF-SUBSCRIBE\n"
        "sentinel rename-command site-buffer PUBLISH DEAF-PUBLISH\n"
    )
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", port), "the deaf sentinel")
        yield port
    finally:
        process.kill()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
