"""Throwaway servers on loopback for the tests and benchmarks: what they share, and a replica.

Each is a context manager that starts real servers on free loopback ports
and stops and removes them afterwards. What a machine lacks (a binary, a
user to run PostgreSQL as) raises :class:`ServiceMissing`, which
``services.started`` turns into a skip, or a failure where services are
required. The Redis ones (one server, a Cluster, Sentinel) are in
``redis_servers.py``.

A streaming replica is made as a contributor would by hand: ``initdb`` a
primary with ``wal_level=replica``, start it, ``pg_basebackup -R -X stream`` a
copy, start the copy as a hot standby on its own port, and wait until the
primary's ``pg_stat_replication`` shows it streaming. PostgreSQL refuses to
run as root, so as root both servers run as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tls import TLSFiles

__all__ = [
    "Replicated",
    "ServiceMissing",
    "free_port",
    "port_open",
    "streaming_replica",
    "wait_for",
]


class ServiceMissing(RuntimeError):
    """This machine lacks what a throwaway server needs."""


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, also: int | None = None) -> int:
    """A free loopback port; with ``also``, port + also must be free too (cluster bus)."""
    for _ in range(1000):
        port = random.randint(20000, 45000)
        if _bindable(port) and (also is None or _bindable(port + also)):
            return port
    raise RuntimeError("no free loopback port")


def port_open(host: str, port: int) -> bool:
    """Whether something listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` until it holds; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout} s")
        time.sleep(0.05)


@dataclass(frozen=True)
class Replicated:
    """URLs of the primary and of its streaming replica (database ``postgres``)."""

    primary_url: str
    replica_url: str
    primary_port: int
    replica_port: int
    bin_dir: Path
    workdir: Path


def _bin_dir() -> Path | None:
    # Debian keeps the server tools out of PATH, under /usr/lib/postgresql/<version>/bin.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_basebackup"))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_basebackup")
    return Path(found).parent if found else None


def _runner() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceMissing(
            "running as root and there is no 'postgres' user to run PostgreSQL as"
        ) from None
    return ["runuser", "-u", "postgres", "--"]


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*_runner(), *args], check=True, capture_output=True, text=True, timeout=120, **kwargs
    )


def _query(bin_dir: Path, port: int, sql: str) -> str:
    out = subprocess.run(
        [
            str(bin_dir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip()


@contextmanager
def streaming_replica() -> Iterator[Replicated]:
    """Start a primary and a streaming replica; stop and remove both afterwards."""
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "pg_basebackup").exists():
        raise ServiceMissing(
            "PostgreSQL server tools (initdb, pg_ctl, pg_basebackup) are not installed"
        )
    assert bin_dir is not None
    if not shutil.which("psql") and not (bin_dir / "psql").exists():
        raise ServiceMissing("psql is needed to watch the replica")
    workdir = Path(tempfile.mkdtemp(prefix="ccat-replica-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(workdir, user.pw_uid, user.pw_gid)
    primary, replica = workdir / "primary", workdir / "replica"
    primary_port, replica_port = free_port(), free_port()
    started: list[Path] = []
    try:
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(primary),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ]
        )
        with open(primary / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {primary_port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{workdir}'\nwal_level = replica\n"
                "max_wal_senders = 4\nfsync = off\nsynchronous_commit = on\n"
                "hot_standby = on\nhot_standby_feedback = on\n"
            )
        with open(primary / "pg_hba.conf", "a") as hba:
            hba.write("host replication postgres 127.0.0.1/32 trust\n")
        _run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(primary),
                "-l",
                str(workdir / "primary.log"),
                "-w",
                "start",
            ]
        )
        started.append(primary)
        _run(
            [
                str(bin_dir / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary_port),
                "-U",
                "postgres",
                "-D",
                str(replica),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ]
        )
        with open(replica / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {replica_port}\n")
        _run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(replica),
                "-l",
                str(workdir / "replica.log"),
                "-w",
                "start",
            ]
        )
        started.append(replica)
        wait_for(
            lambda: (
                _query(bin_dir, primary_port, "SELECT state FROM pg_stat_replication")
                == "streaming"
            ),
            "replica streaming",
            timeout=60,
        )
        url = "postgresql+asyncpg://postgres@127.0.0.1:{}/postgres"
        yield Replicated(
            url.format(primary_port),
            url.format(replica_port),
            primary_port,
            replica_port,
            bin_dir,
            workdir,
        )
    finally:
        for data in reversed(started):
            subprocess.run(
                [*_runner(), str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def tls_postgres(files: TLSFiles) -> Iterator[int]:
    """A PostgreSQL on loopback that takes TLS connections only, client certificates
    verified against ``files.ca``; yields its port, stops and removes it afterwards."""
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        raise ServiceMissing("PostgreSQL server tools (initdb, pg_ctl) are not installed")
    workdir = Path(tempfile.mkdtemp(prefix="ccat-pg-tls-"))
    data, port = workdir / "data", free_port()
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    if owner is not None:
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    started = False
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
              "--no-sync"])  # fmt: skip
        for name, source in (("server.crt", files.server_cert), ("server.key", files.server_key),
                             ("root.crt", files.ca)):  # fmt: skip
            target = data / name
            shutil.copy(source, target)
            target.chmod(0o600)
            if owner is not None:
                os.chown(target, owner.pw_uid, owner.pw_gid)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{workdir}'\nfsync = off\nssl = on\n"
                "ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                "ssl_ca_file = 'root.crt'\n"
            )
        (data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n"
        )
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(workdir / "pg.log"), "-w",
              "start"])  # fmt: skip
        started = True
        yield port
    finally:
        if started:
            subprocess.run(
                [*_runner(), str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(workdir, ignore_errors=True)
