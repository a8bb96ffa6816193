"""A private CA made for one test run: a CA, a server certificate for 127.0.0.1, a client one."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from servers import ServiceMissing


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a private CA, signed by it: server (127.0.0.1, localhost) and client."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def private_ca(directory: Path) -> TLSFiles:
    """Make the files in ``directory`` with the ``openssl`` command (keys 0600)."""
    if shutil.which("openssl") is None:
        raise ServiceMissing("openssl is needed to make a private CA")
    directory.mkdir(parents=True, exist_ok=True)
    days = ("-days", "2")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-subj", "/CN=ccat test CA", *days, cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=postgres")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", subject, cwd=directory)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-extfile", "san.ext", *days,
                 cwd=directory)  # fmt: skip
    for path in directory.iterdir():
        # libpq refuses a key others may read; servers get their own copies.
        path.chmod(0o600 if path.suffix == ".key" else 0o644)
    directory.chmod(0o755)
    return TLSFiles(
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
    )
