"""The documented production install runs the operator commands against Redis.

Slow (about 15 s): it builds the wheel and installs it with only the
``redis,postgres,cli`` extras into a fresh virtual environment, from the
package index (pip's cache and find-links make it quick after the first run).
That is the only way to see that no operator command needs what that install
lacks (aiosqlite, a database URL): issue #14 found every one of them failing
with ``ModuleNotFoundError: No module named 'aiosqlite'``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from services import REDIS_URL, missing

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.retry import FailureKind
from ccat_buffering.testing import new_site_name
from ccat_buffering_redis import RedisBackend
from ccat_buffering_redis.scripts import SCRIPTS

from support import observation

ROOT = Path(__file__).resolve().parents[2]


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, **kwargs)  # type: ignore[call-overload,no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``ccat-buffering[redis,postgres,cli]``; its bin directory."""
    where = tmp_path_factory.mktemp("install")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(where)]
    )
    if built.returncode != 0:
        missing(f"cannot build the wheel: {built.stderr[-500:]}")
    (wheel,) = where.glob("ccat_buffering-*.whl")
    venv = where / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    pip = _run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[redis,postgres,cli]"])
    if pip.returncode != 0:
        missing(f"cannot install from the package index: {pip.stderr[-500:]}")
    return venv / "bin"


def test_the_wheel_ships_the_demo_and_no_throwaway_servers(installed: Path) -> None:
    code = "from importlib.metadata import files; print(*files('ccat-buffering'), sep='\\n')"
    result = _run([str(installed / "python"), "-c", code])
    shipped = set(result.stdout.split())
    assert "ccat_buffering/demo/simulation.py" in shipped, result.stderr
    assert not any("servers" in path for path in shipped), sorted(shipped)


def test_the_wheel_ships_the_lua_scripts(installed: Path) -> None:
    code = "from importlib.metadata import files; print(*files('ccat-buffering'), sep='\\n')"
    result = _run([str(installed / "python"), "-c", code])
    shipped = {p for p in result.stdout.split() if p.startswith("ccat_buffering_redis/lua/")}
    expected = {
        f"ccat_buffering_redis/lua/{p.name}"
        for p in (ROOT / "ccat_buffering_redis" / "lua").glob("*.lua")
    }
    assert expected and shipped == expected, result.stderr
    loads = "from ccat_buffering_redis.scripts import SCRIPTS; print(len(SCRIPTS))"
    assert _run([str(installed / "python"), "-c", loads]).stdout.strip() == str(len(SCRIPTS))


async def _prepare(site: str) -> tuple[str, str]:
    backend = RedisBackend.from_url(REDIS_URL, site=site)
    async with backend:
        manager = TransactionManager(backend)
        txs = [observation(i)[0] for i in range(3)]
        await manager.buffer_many(txs)
        (delivery,) = await manager.claim(1, 600)
        await manager.failed([(delivery, ValueError("bad"), FailureKind.PERMANENT)])
    return delivery.transaction_id, txs[2].transaction_id


def test_operator_commands_in_the_production_install(installed: Path, tmp_path: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing(f"no Redis at {REDIS_URL}: {exc}")
    site = new_site_name()
    try:
        letter, waiting = asyncio.run(_prepare(site))
        probe = _run([str(installed / "python"), "-c", "import aiosqlite"])
        assert probe.returncode != 0, "the production install should not have aiosqlite"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCAT_BUFFERING_")}
        env.update({"CCAT_BUFFERING_SITE_NAME": site, "CCAT_BUFFERING_BACKEND_URL": REDIS_URL})
        command = str(installed / "ccat-buffering")
        expected = {
            ("status", "--json"): 1,  # a dead letter needs attention
            ("dlq", "list", "--json"): 0,
            ("inspect", waiting, "--json"): 0,
            ("keys", "audit", "--json"): 0,
        }
        for argv, code in expected.items():
            result = _run([command, *argv], env=env, cwd=tmp_path)
            assert "Traceback" not in result.stderr, result.stderr
            assert result.returncode == code, (argv, result.stdout, result.stderr)
            data = json.loads(result.stdout)
            if argv[0] == "dlq":
                assert [d["letter_id"] for d in data] == [letter]
            if argv[0] == "status":
                assert data["buffer"]["depth"] == 2 and data["buffer"]["dead_letters"] == 1
        worker = _run([command, "worker", "--models", "ccat_buffering.demo.example:Base"], env=env)
        assert worker.returncode == 2 and "no database_url" in worker.stderr, worker.stderr
    finally:
        keys = list(client.scan_iter(match=f"site:{{{site}}}:*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()
