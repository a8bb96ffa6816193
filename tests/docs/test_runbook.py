r"""The documented commands work as written, on a prepared Redis site.

Every ``ccat-buffering ...`` line of every page of ``docs/`` and of
``README.md`` (``$ ccat-buffering ...`` in console blocks, ``ccat-buffering
...`` in shell blocks) runs through the real command, with the environment
pointing at a site prepared with the library: a few waiting transactions, one
in flight, two dead letters and a lease left by a worker that is gone.
Variable assignments in front of a command (``CCAT_BUFFERING_X=... \``) give
way to the prepared site's environment.
Placeholders such as ``<letter-id>`` and ``<transaction-id>`` become real ids
of that site. Commands that run until stopped (``worker``, ``console``, ``status --watch``)
are run with ``--help`` appended, which checks that their options exist.

Each command must exit 0 or 1 (1 is the documented "needs attention" exit of
``status``, ``keys audit``, ``inspect`` and ``dlq replay``), never 2 (a usage
error) and never with a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from services import REDIS_URL, missing
from test_docs import blocks
from typer.testing import CliRunner, Result

from ccat_buffering.cli import app
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.demo.example import Base
from ccat_buffering.drain.database import create_engine
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_redis import RedisBackend

from support import make_schema, observation, orphan_package

DOCS = Path(__file__).resolve().parents[2] / "docs"
README = DOCS.parent / "README.md"
PAGES = [*sorted(DOCS.glob("*.rst")), README]
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "2>&1", "&"}
MODELS = "ccat_buffering.demo.example:Base"

# Sub-commands each page must show (so that an edit cannot drop them unnoticed).
REQUIRED = {
    "operations.rst": {
        "status",
        "inspect",
        "dlq list",
        "dlq show",
        "dlq replay",
        "dlq purge",
        "keys audit",
        "worker",
        "conflicts list",
        "conflicts show",
        "conflicts resolve",
    },
    "quickstart.rst": {"db init", "worker", "status"},
    "README.md": {"db init", "worker", "status", "inspect", "dlq list", "dlq replay", "keys audit"},
}


@dataclass
class PreparedSite:
    name: str
    env: dict[str, str | None]
    letters: list[str]
    in_flight: str
    waiting: list[str]


def _dead_pid() -> int:
    """The id of a process that has just exited."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


async def _prepare(site: str, database_url: str) -> tuple[list[str], str, list[str]]:
    settings = BufferingSettings(
        site_name=site,
        backend_url=REDIS_URL,
        database_url=database_url,
        max_attempts=1,  # a data error is dead-lettered on its first failure
        batch_size=2,
    )
    engine = create_engine(database_url)
    await make_schema(engine)
    coordinator = BufferingCoordinator(
        settings,
        RedisBackend.from_url(REDIS_URL, site=site),
        engine,
        ModelRegistry.from_base(Base),
        owns=True,
        start=False,
    )
    async with coordinator:
        backend, manager = coordinator.backend, coordinator.manager
        await coordinator.prepare_database()
        # Two packages of observation units that do not exist: the foreign key
        # refuses both, so the processor dead-letters them, one per cycle (a
        # failure stops its batch: order holds through failures).
        await manager.buffer_many([orphan_package(i) for i in range(2)])
        for _ in range(2):
            assert await coordinator.processor.run_once() == 0
        await backend.lease.release(coordinator.processor.holder)
        letters = [letter.letter_id for letter in await backend.dead_letters.list()]
        assert len(letters) == 2, letters
        waiting = [observation(i)[0] for i in range(4)]
        await manager.buffer_many(waiting)
        (claimed,) = await manager.claim(1, 600)  # one in flight, as a killed worker leaves it
        # The lease of a worker that is gone: this host, a process that has exited.
        gone = f"{socket.gethostname()}-{_dead_pid()}-0a1b2c3d"
        assert await backend.lease.acquire(gone, 120)
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.dead_letters) == (3, 1, 2)
    return letters, claimed.transaction_id, [tx.transaction_id for tx in waiting[1:]]


def _delete_site(site: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        # Every key of a site lives under site:{<site>}: (see docs/redis.rst).
        keys = list(client.scan_iter(match=f"site:{{{site}}}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PreparedSite]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing(f"no Redis at {REDIS_URL}: {exc}")
    finally:
        client.close()
    # No .env or ccat-buffering.toml of the working directory may leak in.
    monkeypatch.chdir(tmp_path)
    site = new_site_name()
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    settings_file = tmp_path / "empty.toml"  # a named file must exist; this one sets nothing
    settings_file.write_text("")
    try:
        letters, in_flight, waiting = asyncio.run(_prepare(site, database_url))
        env: dict[str, str | None] = {
            name: None for name in os.environ if name.startswith("CCAT_BUFFERING_")
        }
        env.update(
            {
                "CCAT_BUFFERING_SITE_NAME": site,
                "CCAT_BUFFERING_SITE_TYPE": "secondary",
                "CCAT_BUFFERING_BACKEND_URL": REDIS_URL,
                "CCAT_BUFFERING_DATABASE_URL": database_url,
                "CCAT_BUFFERING_MODELS": MODELS,
                "CCAT_BUFFERING_CONFIG_FILE": str(settings_file),
                "COLUMNS": "120",
            }
        )
        yield PreparedSite(site, env, letters, in_flight, waiting)
    finally:
        _delete_site(site)


def commands(page: str) -> list[str]:
    """The ``ccat-buffering ...`` lines of a page's console and shell blocks, in order."""
    path = README if page == "README.md" else DOCS / page
    found = []
    for language, code in blocks(path):
        if language not in ("console", "sh", "bash"):
            continue
        joined = re.sub(r"\\\n\s*", " ", code)  # continuation lines
        for raw in joined.splitlines():
            line = raw.strip()
            if language == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            line = re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", line)  # VAR=value in front
            line = line.removeprefix(".venv/bin/")
            if line == "ccat-buffering" or line.startswith("ccat-buffering "):
                found.append(line)
    return found


PAGES_WITH_COMMANDS = sorted(p.name for p in PAGES if commands(p.name))


def _argv(line: str, site: PreparedSite) -> list[str]:
    words = shlex.split(line, comments=True)
    for index, word in enumerate(words):
        if word in SHELL_OPERATORS:
            words = words[:index]
            break
    assert words[0] == "ccat-buffering", line
    argv = []
    for word in words[1:]:
        placeholder = re.fullmatch(r"<([\w-]+)>", word)
        if placeholder is None:
            assert "<" not in word and ">" not in word, f"unknown placeholder in {line!r}"
            argv.append(word)
        elif placeholder.group(1) in ("letter-id", "id", "letter-id..."):
            argv.append(site.letters[0])
        elif placeholder.group(1) == "transaction-id":
            argv.append(site.in_flight)
        elif placeholder.group(1) == "conflict-id":
            argv.append("1")  # the prepared site has none: show and resolve say so (exit 1)
        else:
            pytest.fail(f"the test does not know the placeholder {word} in {line!r}")
    return argv


def _subcommand(argv: list[str]) -> str:
    return " ".join(argv[:2]) if argv[0] in ("dlq", "keys", "db", "conflicts") else argv[0]


def _runs_forever(argv: list[str]) -> bool:
    return argv[0] in ("worker", "console") or (argv[0] == "status" and "--watch" in argv)


def _invoke(argv: list[str], env: dict[str, str | None]) -> Result:
    result = CliRunner().invoke(app, argv, input="y\n", env=env)
    shown = f"$ ccat-buffering {shlex.join(argv)}\n{result.output}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{shown}\nraised {result.exception!r}") from result.exception
    assert "Traceback" not in result.output, shown
    assert result.exit_code in (0, 1), f"exit {result.exit_code} (2 is a usage error)\n{shown}"
    return result


def test_the_pages_that_must_show_commands_do() -> None:
    assert set(REQUIRED) <= set(PAGES_WITH_COMMANDS)


def _createdb(page: str) -> None:
    """Run the page's ``$ createdb ... <name>`` lines on the test's PostgreSQL (if missing)."""
    path = README if page == "README.md" else DOCS / page
    names = re.findall(r"^\s*\$ createdb .* (\w+)$", path.read_text(), re.MULTILINE)
    if not names:
        return
    from services import POSTGRES_URL

    asyncpg = pytest.importorskip("asyncpg")

    async def create() -> None:
        try:
            conn = await asyncpg.connect(POSTGRES_URL.replace("+asyncpg", ""), timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            missing(f"no PostgreSQL at {POSTGRES_URL}: {exc}")
        try:
            for name in names:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", name):
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())


@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS)
def test_every_documented_command_runs(page: str, prepared: PreparedSite) -> None:
    lines = commands(page)
    assert lines, f"{page} shows no ccat-buffering command"
    _createdb(page)
    seen: set[str] = set()
    for line in lines:
        argv = _argv(line, prepared)
        assert argv, f"{page}: {line!r} names no sub-command"
        seen.add(_subcommand(argv))
        if _runs_forever(argv):
            result = _invoke([*argv, "--help"], prepared.env)
            assert result.exit_code == 0 and "Usage" in result.output, result.output
            continue
        result = _invoke(argv, prepared.env)
        if argv[:2] == ["status", "--json"]:
            health = json.loads(result.stdout)
            assert health["healthy"] is False
            assert any("dead-letter queue" in w for w in health["warnings"]), health
            assert any("worker that is gone" in w for w in health["warnings"]), health
    missing_commands = REQUIRED.get(page, set()) - seen
    assert not missing_commands, f"{page} no longer shows {sorted(missing_commands)}"


def test_the_worker_command_parses() -> None:
    result = _invoke(["worker", "--help"], {"CCAT_BUFFERING_MODELS": MODELS})
    assert result.exit_code == 0
    for option in ("--models", "--metrics-port", "--verbose"):
        assert option in result.output, result.output
