"""A throwaway PostgreSQL primary and its streaming replica, on loopback.

The recipe (also in docs/contributing.rst): ``initdb`` a primary with
``wal_level=replica``, start it, ``pg_basebackup -R -X stream`` a copy, start
the copy as a hot standby on its own port, and wait until the primary's
``pg_stat_replication`` shows it streaming. PostgreSQL refuses to run as
root, so when the tests run as root both servers run as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services import free_port, missing, wait_for


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
        missing("running as root and there is no 'postgres' user to run PostgreSQL as")
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
        missing("PostgreSQL server tools (initdb, pg_ctl, pg_basebackup) are not installed")
    assert bin_dir is not None
    if not shutil.which("psql") and not (bin_dir / "psql").exists():
        missing("psql is needed to watch the replica")
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
