"""Secrets stay secret: every URL form opens, and no password shows on any surface.

Real password-protected servers (a Redis, a Sentinel in front of it, a
Cluster) and the test PostgreSQL (trust: any password is accepted, so one
can be put in every position). Each URL form carries the password in the
user-info or as ``?password=``; the sweep reads every output surface — the
commands' output and errors (text and JSON), the worker's start line, the
settings' ``repr``/``str``, configuration errors, logs with tracebacks,
health and metrics over HTTP, dead-letter reasons — and none may hold it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest
from redis_servers import ThrowawayRedis, redis_server
from servers import ServiceMissing, free_port, port_open, wait_for
from services import POSTGRES_URL, missing, started
from typer.testing import CliRunner

from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.cli import app
from ccat_buffering.config.backends import open_backend
from ccat_buffering.config.settings import BufferingSettings, load_settings
from ccat_buffering.demo.example import Base
from ccat_buffering.errors import BackendUnavailableError, BufferingError, ConfigurationError
from ccat_buffering.logs import install
from ccat_buffering.masking import mask_text, mask_url
from ccat_buffering.site.coordinator import BufferingCoordinator, transaction_manager
from ccat_buffering.testing import new_site_name
from ccat_buffering.web.fastapi import health_router
from ccat_buffering.web.metrics import SiteMetrics
from ccat_buffering.write.registry import ModelRegistry

from support import observation, worker_env

PW = "Zq7-s3cret-Pw"
"""The live servers' password (URL-safe, so it can sit in every position as is)."""

ODD = "p@ss:w/rd?x#y%z"
"""A password with every character that breaks a URL when left unencoded."""

SPOTS = ("Zq7", "s3cret", "ss:w/rd", "rd?x", "x#y")
"""Pieces of the passwords: none may show anywhere."""


def _clean(text: str) -> None:
    for spot in SPOTS:
        assert spot not in text, f"{spot!r} shows in: {text[:2000]}"


@pytest.fixture(scope="module")
def secured() -> Iterator[dict[str, str]]:
    """A Redis, a Sentinel in front of it and a 3-node Cluster, all with ``requirepass``.

    Yields the backend URLs in every documented form, the password in each.
    """
    cli = shutil.which("redis-cli")
    if cli is None or shutil.which("redis-server") is None:
        missing("redis-server and redis-cli are needed")
    assert cli is not None
    with started(_SecuredSet(cli)) as urls:
        yield urls


class _SecuredSet:
    """The servers of :func:`secured`, as a context manager (``services.started`` wraps it)."""

    def __init__(self, cli: str) -> None:
        self.cli = cli
        self.dir = Path(tempfile.mkdtemp(prefix="ccat-secured-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.redis = ThrowawayRedis("--requirepass", PW)

    def __enter__(self) -> dict[str, str]:
        try:
            return self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _start(self) -> dict[str, str]:
        self.redis.extra = ("--requirepass", PW)
        self.redis.process = redis_server(self.redis.port, self.redis.dir, *self.redis.extra)
        wait_for(lambda: port_open("127.0.0.1", self.redis.port), "secured redis")
        sentinel = free_port()
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {sentinel}\nbind 127.0.0.1\ndir {self.dir}\nrequirepass {PW}\n"
            f"sentinel monitor site-buffer 127.0.0.1 {self.redis.port} 1\n"
            f"sentinel auth-pass site-buffer {PW}\n"
        )
        self.processes.append(
            subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(lambda: port_open("127.0.0.1", sentinel), "secured sentinel")
        nodes: list[int] = []
        while len(nodes) < 3:
            port = free_port(also=10000)
            if port not in nodes:
                nodes.append(port)
        for port in nodes:
            node = self.dir / str(port)
            node.mkdir()
            self.processes.append(
                redis_server(
                    port,
                    node,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node / "nodes.conf"),
                    "--requirepass",
                    PW,
                    "--masterauth",
                    PW,
                )
            )
        for port in nodes:
            wait_for(lambda port=port: port_open("127.0.0.1", port), f"secured node {port}")
        created = subprocess.run(
            [self.cli, "-a", PW, "--no-auth-warning", "--cluster", "create"]
            + [f"127.0.0.1:{p}" for p in nodes]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise ServiceMissing(f"redis-cli --cluster create failed: {created.stderr!r}")

        def converged() -> bool:
            out = subprocess.run(
                [self.cli, "-a", PW, "--no-auth-warning", "-p", str(nodes[0]), "cluster", "info"],
                capture_output=True,
                text=True,
            ).stdout
            return "cluster_state:ok" in out

        wait_for(converged, "secured cluster ok")
        port, dead = self.redis.port, free_port()
        return {
            "user-info": f"redis://:{PW}@127.0.0.1:{port}/0",
            "user and password": f"redis://default:{PW}@127.0.0.1:{port}/0",
            "query": f"redis://127.0.0.1:{port}/0?password={PW}",
            "sentinel": f"redis+sentinel://:{PW}@127.0.0.1:{sentinel},127.0.0.1:{dead}/site-buffer",
            "sentinel, user": (
                f"redis+sentinel://default:{PW}@127.0.0.1:{dead},127.0.0.1:{sentinel}/site-buffer/0"
            ),
            "cluster": f"redis+cluster://:{PW}@" + ",".join(f"127.0.0.1:{p}" for p in nodes),
        }

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.redis.__exit__(None, None, None)
        shutil.rmtree(self.dir, ignore_errors=True)


def _database_urls() -> dict[str, str]:
    """The test PostgreSQL with a password in the user-info and as ``?password=``."""
    base = POSTGRES_URL.split("://", 1)[1].rsplit("@", 1)[-1]
    user = POSTGRES_URL.split("://", 1)[1].rsplit("@", 1)[0].split(":")[0] or "postgres"
    return {
        "user-info": f"postgresql+asyncpg://{user}:{PW}@{base}",
        "query": f"postgresql+psycopg://{user}@{base}?password={PW}",
    }


# -- the masking functions, every form ---------------------------------------------------


FORMS = [
    f"redis://:{PW}@h:6379/0",
    f"redis://u:{PW}@h:6379/0?ssl_cert_reqs=required",
    f"rediss://u:{PW}@h:6380/1",
    f"redis://h:6379/0?password={PW}&socket_timeout=2",
    f"unix:///run/redis.sock?db=0&password={PW}",
    f"redis+sentinel://:{PW}@h1:26379,h2:26379,h3:26379/mymaster/0",
    f"redis+sentinel://ops:{PW}@h1,h2/mymaster?ssl=true",
    f"redis+cluster://:{PW}@h1:7000,h2:7001,h3:7002",
    f"redis+cluster://ops:{PW}@h1:7000,h2:7001?ssl=true&ssl_ca_certs=/etc/ca.pem",
    f"postgresql+asyncpg://ops:{PW}@db:5432/ops?ssl=verify-full",
    f"postgresql+psycopg://ops@db/ops?sslmode=verify-full&password={PW}",
    f"redis://u:{ODD}@h:6379/0",
    f"redis+sentinel://:{ODD}@h1:26379,h2:26379/m",
    f"postgresql+asyncpg://ops:{ODD}@db:5432/ops",
    f"postgresql+asyncpg://ops@db/ops?sslpassword={PW}&password={PW}",
    f"redis+sentinel://h1,h2/m?sentinel_password={PW}&db=0",
]


@pytest.mark.parametrize("url", FORMS)
def test_mask_url_hides_the_password_and_keeps_the_rest(url: str) -> None:
    masked = mask_url(url)
    assert masked is not None
    _clean(masked)
    assert "***" in masked
    assert masked.split("://")[0] == url.split("://")[0]
    for host in ("h1", "h2", "h:6379", "db"):
        if host in url.split("?")[0].rsplit("@", 1)[-1]:
            assert host in masked, masked
    assert mask_url(masked) == masked  # masking twice changes nothing more
    _clean(mask_text(f"connecting to {url}: refused ('{url}', {{'password': '{PW}'}})"))


def test_free_text_keywords_and_reprs() -> None:
    text = mask_text(f"host=db password={PW} user=ops; kwargs {{'password': '{PW}', 'db': 0}}")
    _clean(text)
    assert "host=db" in text and "user=ops" in text and "'db': 0" in text


def test_settings_show_no_password_in_repr_str_or_masked() -> None:
    settings = BufferingSettings(
        site_name="s",
        backend_url=FORMS[5],
        database_url=FORMS[9],
        replica_url=FORMS[10],
        database_engine_options={"connect_args": {"password": PW}},
    )
    for text in (repr(settings), str(settings), json.dumps(settings.masked())):
        _clean(text)
    assert settings.backend_url == FORMS[5]  # the value itself is untouched


@pytest.mark.parametrize(
    "setting, url",
    [
        ("backend_url", f"redis://u:{ODD}@h:6379/0"),
        ("backend_url", f"redis://u:{ODD}@h:port/0"),
        ("backend_url", f"redis://:{PW}@h:6379/notanumber"),
        ("backend_url", f"nosuch://u:{PW}@h"),
        ("database_url", f"postgres://u:{ODD}@h/db"),
        ("database_url", f"postgres://u:{PW}@h/db"),
        ("database_url", f"postgresql://u:{PW}@h/db?password={PW}"),
        ("replica_url", f"postgresql+psycopg2://u:{PW}@h/db"),
    ],
)
def test_configuration_errors_do_not_echo_the_password(setting: str, url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(site_name="s", **{setting: url})
    _clean(str(caught.value))
    result = CliRunner().invoke(
        app, ["status", "--json", "--site", "s", f"--{setting[:-4]}-url", url]
    )
    assert result.exit_code == 2, result.output
    _clean(result.output)


def test_every_library_error_is_masked_whoever_makes_it() -> None:
    for url in FORMS:
        _clean(str(BufferingError(f"failed on {url}")))


def test_logs_and_tracebacks_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    install()
    log = logging.getLogger("ccat_buffering.test_secrets")
    with caplog.at_level(logging.INFO, logger="ccat_buffering"):
        log.info("opening %s", FORMS[7])
        try:
            raise OSError(f"connect failed: {FORMS[9]}")
        except OSError:
            log.exception("could not open the database")
    handler = logging.StreamHandler()
    formatted = "\n".join(handler.format(record) for record in caplog.records)
    assert "connect failed" in formatted and "***" in formatted
    _clean(formatted)


# -- live servers: every URL form opens, and no surface shows the password ----------------


async def test_every_url_form_opens_and_errors_are_masked(secured: dict[str, str]) -> None:
    for form, url in secured.items():
        backend = open_backend(url, site=new_site_name())
        try:
            await backend.buffer.push(["{}"])
            assert (await backend.buffer.stats()).depth == 1, form
            _clean(repr(backend))
        finally:
            await backend.aclose()
    wrong = secured["user-info"].replace(PW, PW + "-wrong")
    backend = open_backend(wrong, site=new_site_name())
    with pytest.raises(BufferingError) as caught:
        await backend.buffer.stats()
    await backend.aclose()
    _clean(str(caught.value))
    dead = f"redis://:{PW}@127.0.0.1:{free_port()}/0?password={PW}"
    backend = open_backend(dead, site=new_site_name())
    with pytest.raises(BackendUnavailableError) as unreachable:
        await backend.buffer.stats()
    await backend.aclose()
    _clean(str(unreachable.value))


@pytest.mark.parametrize(
    "form, database",
    [
        ("user-info", "query"),
        ("query", "user-info"),
        ("sentinel", "query"),
        ("cluster", "user-info"),
    ],
)
async def test_the_commands_show_no_password(
    secured: dict[str, str], form: str, database: str
) -> None:
    site = new_site_name()
    env = {
        "CCAT_BUFFERING_SITE_NAME": site,
        "CCAT_BUFFERING_BACKEND_URL": secured[form],
        "CCAT_BUFFERING_DATABASE_URL": _database_urls()[database],
        "CCAT_BUFFERING_REPLICA_URL": _database_urls()[database],
    }
    backend = open_backend(secured[form], site=site)
    try:
        await backend.buffer.push(["{not a transaction"])
        (claim,) = await backend.buffer.claim(1, 60)
        await backend.buffer.dead_letter(claim.receipt, f"bad: {secured[form]}", None)
        commands = [
            ["status"],
            ["status", "--json"],
            ["dlq", "list", "--json"],
            ["dlq", "list"],
            ["inspect", "nope", "--json"],
            ["keys", "audit", "--json"],
            ["audit", "--json"],
            ["dlq", "purge", "--all", "--yes"],
        ]
        for args in commands:
            result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
            assert result.exit_code in (0, 1), (args, result.output)
            _clean(result.output)
        result = await asyncio.to_thread(CliRunner().invoke, app, ["status", "--json"], env=env)
        health = json.loads(result.stdout)
        assert "***" in health["backend"] and "***" in health["database"]
    finally:
        await backend.aclose()


async def test_dead_letter_reasons_are_masked() -> None:
    from ccat_buffering_memory import MemoryBackend

    settings = BufferingSettings(site_name=new_site_name())
    backend = MemoryBackend(settings.site_name)
    manager = transaction_manager(settings, backend)
    await manager.buffer(observation(1)[0])
    (delivery,) = await manager.claim(1, 60)
    error = OSError(f"could not reach {FORMS[9]} (password={PW})")
    await manager.failed([(delivery, error, FailureKind.PERMANENT)])
    (letter,) = await backend.dead_letters.list()
    _clean(letter.reason)
    assert "could not reach" in letter.reason


async def test_health_and_metrics_over_http_show_no_password(secured: dict[str, str]) -> None:
    settings = BufferingSettings(
        site_name=new_site_name(),
        backend_url=secured["query"],
        database_url=_database_urls()["query"],
        replica_url=_database_urls()["user-info"],
    )
    site = BufferingCoordinator.from_settings(
        settings, registry=ModelRegistry.from_base(Base), start=False
    )
    web = FastAPI()
    web.state.buffering = site
    web.include_router(health_router())
    metrics = SiteMetrics(site)
    try:
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/buffering/health")
        assert response.status_code in (200, 503)
        _clean(response.text)
        await metrics.refresh()
        _clean(generate_latest(metrics.registry).decode())
        _clean(json.dumps(site.describe()))
    finally:
        await site.aclose()


def test_the_worker_start_line_shows_no_password(secured: dict[str, str], tmp_path: Path) -> None:
    env = worker_env(new_site_name(), _database_urls()["query"], backend_url=secured["sentinel"])
    process = subprocess.Popen(
        [sys.executable, "-m", "ccat_buffering", "worker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        for raw in iter(process.stdout.readline, b""):
            lines.append(raw.decode())
            if "starting:" in lines[-1]:
                break
    finally:
        # Only the start line is wanted here; stopping is tested elsewhere.
        if process.poll() is None:
            process.kill()
        lines.append(process.communicate()[0].decode())
    text = "".join(lines)
    assert "starting:" in text and "***" in text, text
    _clean(text)
