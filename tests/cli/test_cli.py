"""The ccat-buffering command: the simulation counts from the database and stores."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest
from servers import free_port
from typer.testing import CliRunner

from ccat_buffering.cli import app
from ccat_buffering.demo.simulation import simulate
from ccat_buffering.drain.executor import BatchResult, Outcome, TransactionExecutor
from ccat_buffering.write.models import Transaction


def test_simulate_json_reports_nothing_lost() -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--observations", "150", "--poison", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["transactions"] == 302
    assert summary["buffered"] == 302
    assert summary["committed"] == 300
    assert summary["replicated"] == 300
    assert summary["dead_lettered"] == 2
    assert summary["lost"] == 0
    assert summary["applied_twice"] == 0
    assert summary["visible_during_outage"] == summary["sampled"] > 0
    assert summary["outage_pauses"] > 0
    assert summary["attempts_during_outage"] == 0
    assert summary["caches_left"] == 0
    assert summary["seconds"] > 0


def test_simulate_table() -> None:
    result = CliRunner().invoke(app, ["simulate", "--observations", "20", "--poison", "0"])
    assert result.exit_code == 0, result.output
    assert "applied twice" in result.stdout and "ok" in result.stdout


async def test_simulation_counts_what_the_database_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A processor that acknowledges a transaction it never applied is caught as a loss.

    The dropped transaction starts an observation; the one finishing it then
    fails its foreign key and is dead-lettered, so both count as lost.
    """
    original = TransactionExecutor.execute_batch
    dropped: list[str] = []

    async def drop_first(self: TransactionExecutor, transactions: list[Transaction]) -> BatchResult:
        if dropped or not transactions:
            return await original(self, transactions)
        result = await original(self, transactions[1:])
        dropped.append(transactions[0].transaction_id)
        skipped = Outcome(transactions[0].transaction_id, applied=True)
        return BatchResult([skipped, *result.outcomes], result.commit_lsn)

    monkeypatch.setattr(TransactionExecutor, "execute_batch", drop_first)
    summary = await simulate(30, poison=0)
    assert dropped
    assert summary.lost == 2
    assert summary.committed == 58
    assert summary.dead_lettered == 1
    assert not summary.ok


# --- Configuration and usage errors: one line, the right exit code, no traceback ---

MODELS = "ccat_buffering.demo.example:Base"


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """No CCAT_BUFFERING_* variable, .env or TOML of the caller may leak in."""
    monkeypatch.chdir(tmp_path)
    env: dict[str, str | None] = {n: None for n in os.environ if n.startswith("CCAT_BUFFERING_")}
    for name in env:
        monkeypatch.delenv(name)
    return env


def _fails(argv: list[str], env: dict[str, str | None], code: int, *expected: str) -> str:
    """Run a command that must fail with one short message; return the message."""
    result = CliRunner().invoke(app, argv, env=env)
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, result.output
    assert lines[0].startswith("ccat-buffering: "), result.output
    for text in expected:
        assert text in result.output, (text, result.output)
    return result.output


@pytest.mark.parametrize("argv", [["status"], ["dlq", "list"], ["inspect", "x"], ["keys", "audit"]])
def test_no_site_name_is_an_error_naming_the_variable(
    argv: list[str], clean_env: dict[str, str | None]
) -> None:
    _fails(argv, clean_env, 2, "no site name", "CCAT_BUFFERING_SITE_NAME", "--site")


def test_a_misspelt_site_variable_is_named(clean_env: dict[str, str | None]) -> None:
    env = {**clean_env, "CCAT_BUFFERING_SITENAME": "cerro"}
    _fails(["status"], env, 2, "CCAT_BUFFERING_SITENAME is set: a typo?")


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"CCAT_BUFFERING_SITE_NAME": "my site"}, "site name 'my site' is not a plain identifier"),
        (
            {"CCAT_BUFFERING_BATCH_SIZE": "0"},
            "CCAT_BUFFERING_BATCH_SIZE='0': Input should be greater than or equal to 1",
        ),
        ({"CCAT_BUFFERING_SITE_TYPE": "primary"}, "CCAT_BUFFERING_SITE_TYPE='primary'"),
        (
            {"CCAT_BUFFERING_BACKEND_URL": "redis:/127.0.0.1:6379/6"},
            "backend URL 'redis:/127.0.0.1:6379/6' is malformed",
        ),
        ({"CCAT_BUFFERING_BACKEND_URL": "redis://h/x"}, "Redis database 'x'"),
        ({"CCAT_BUFFERING_BACKEND_URL": "mongodb://h/0"}, "unknown scheme mongodb://"),
        (
            {"CCAT_BUFFERING_DATABASE_URL": "postgres://ops:pw@h/ops"},
            "write 'postgresql+asyncpg://ops:***@h/ops'",
        ),
        (
            {"CCAT_BUFFERING_DATABASE_URL": "postgresql://ops:pw@h/ops"},
            "names no async driver: write postgresql+asyncpg://",
        ),
        ({"CCAT_BUFFERING_REPLICA_URL": "sqlite:///x.db"}, "sqlite+aiosqlite://"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_an_invalid_setting_is_one_line_naming_it(
    variables: dict[str, str], expected: str, clean_env: dict[str, str | None]
) -> None:
    env = {**clean_env, "CCAT_BUFFERING_SITE_NAME": "cerro", **variables}
    output = _fails(["status"], env, 2, expected)
    assert "pw" not in output  # passwords masked


def test_an_invalid_option_names_the_option(clean_env: dict[str, str | None]) -> None:
    _fails(["status", "--site", "a:b"], clean_env, 2, "--site 'a:b'")
    _fails(["--site", "cerro", "status", "--backend-url", "redis:/h"], clean_env, 2, "malformed")


def test_invalid_toml_and_a_missing_config_file(
    tmp_path: Path, clean_env: dict[str, str | None]
) -> None:
    (tmp_path / "ccat-buffering.toml").write_text('site_name = "cerro\n')
    _fails(["status"], clean_env, 2, "ccat-buffering.toml is not valid TOML", "line 1")
    _fails(["status", "--config", "nowhere.toml"], clean_env, 2, "'nowhere.toml', which is not")


def test_config_option_reads_the_file(tmp_path: Path, clean_env: dict[str, str | None]) -> None:
    config = tmp_path / "site.toml"
    config.write_text('site_name = "from-file"\n')
    result = CliRunner().invoke(app, ["status", "--config", str(config), "--json"], env=clean_env)
    assert json.loads(result.stdout)["site"] == "from-file", result.output
    assert "CCAT_BUFFERING_CONFIG_FILE" not in os.environ  # restored


def test_errors_are_json_with_json(clean_env: dict[str, str | None]) -> None:
    result = CliRunner().invoke(app, ["dlq", "list", "--json"], env=clean_env)
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["exit_code"] == 2 and "no site name" in error["message"]
    result = CliRunner().invoke(app, ["dlq", "replay", "--site", "s", "--json"], env=clean_env)
    assert result.exit_code == 2 and "--all" in json.loads(result.stdout)["error"]["message"]


def test_an_unreachable_buffer_exits_3(clean_env: dict[str, str | None]) -> None:
    env = {**clean_env, "CCAT_BUFFERING_SITE_NAME": "cerro"}
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    for argv in (["status"], ["dlq", "list"], ["inspect", "x"], ["keys", "audit"]):
        output = _fails([*argv, "--backend-url", url], env, 3, "cannot be reached")
        assert "s3cret" not in output
    result = CliRunner().invoke(app, ["status", "--backend-url", url, "--json"], env=env)
    assert result.exit_code == 3
    assert json.loads(result.stdout)["error"]["type"] == "BackendUnavailableError"


def test_verbose_shows_the_traceback(clean_env: dict[str, str | None]) -> None:
    env = {**clean_env, "CCAT_BUFFERING_SITE_NAME": "cerro"}
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(app, ["status", "--backend-url", url, "-v"], env=env)
    assert result.exit_code == 3 and "Traceback" in result.output


def test_db_init_needs_a_database_url_and_says_so(clean_env: dict[str, str | None]) -> None:
    _fails(["db", "init"], clean_env, 2, "no database_url", "CCAT_BUFFERING_DATABASE_URL")


def test_db_init_with_the_database_down(clean_env: dict[str, str | None]) -> None:
    url = f"postgresql+asyncpg://ops:s3cret@127.0.0.1:{free_port()}/ops"
    output = _fails(["db", "init", "--database-url", url], clean_env, 3, "cannot be reached")
    assert "s3cret" not in output and "***" in output


def test_db_init_with_a_missing_database(clean_env: dict[str, str | None]) -> None:
    from services import POSTGRES_URL, missing

    try:
        import asyncpg  # noqa: F401
    except ImportError:
        missing("asyncpg is not installed")
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/no_such_database_ccat"
    probe = CliRunner().invoke(app, ["db", "init", "--database-url", url], env=clean_env)
    if probe.exit_code == 3:
        missing(f"no PostgreSQL at {POSTGRES_URL}")
    _fails(["db", "init", "--database-url", url], clean_env, 2, "does not exist")


def test_db_init_json(tmp_path: Path, clean_env: dict[str, str | None]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    result = CliRunner().invoke(app, ["db", "init", "--database-url", url, "--json"], env=clean_env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ledger_table"]


def test_db_prune_dry_run_then_prune(tmp_path: Path, clean_env: dict[str, str | None]) -> None:
    import asyncio
    import datetime as dt

    from ccat_buffering.drain.database import create_engine, ledger_table

    url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    env = {**clean_env, "CCAT_BUFFERING_SITE_NAME": "cerro", "CCAT_BUFFERING_DATABASE_URL": url}
    assert CliRunner().invoke(app, ["db", "init"], env=env).exit_code == 0

    async def seed() -> None:
        engine = create_engine(url)
        now = dt.datetime.now(dt.UTC)
        async with engine.begin() as conn:
            await conn.execute(
                ledger_table.insert(),
                [
                    {
                        "transaction_id": f"t-{i}",
                        "endpoint": "e",
                        "applied_at": now,
                        "site": site,
                        "created_at": now - dt.timedelta(days=days),
                    }
                    for i, (site, days) in enumerate(
                        [("cerro", 30), ("cerro", 20), ("cerro", 1), ("other", 30)]
                    )
                ],
            )
        await engine.dispose()

    asyncio.run(seed())
    dry = CliRunner().invoke(app, ["db", "prune", "--dry-run", "--json"], env=env)
    assert dry.exit_code == 0, dry.output
    assert (json.loads(dry.stdout)["rows"], json.loads(dry.stdout)["remaining"]) == (2, 1)
    done = CliRunner().invoke(app, ["db", "prune"], env=env)
    assert done.exit_code == 0, done.output
    assert "deleted 2 ledger row(s)" in done.stdout and "1 row(s) of the site remain" in done.stdout
    again = CliRunner().invoke(app, ["db", "prune", "--json"], env=env)
    assert json.loads(again.stdout)["rows"] == 0


def test_worker_without_a_database_url(clean_env: dict[str, str | None]) -> None:
    env = {**clean_env, "CCAT_BUFFERING_SITE_NAME": "cerro"}
    _fails(["worker", "--models", MODELS], env, 2, "no database_url")


def test_worker_with_its_metrics_port_in_use(
    tmp_path: Path, clean_env: dict[str, str | None]
) -> None:
    pytest.importorskip("prometheus_client")
    env = {
        **clean_env,
        "CCAT_BUFFERING_SITE_NAME": "cerro",
        "CCAT_BUFFERING_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'w.db'}",
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["worker", "--models", MODELS, "--metrics-port", str(port)]
        result = CliRunner().invoke(app, argv, env=env)
    assert result.exit_code == 2, result.output
    assert f"--metrics-port {port} is in use: choose another port" in result.output
    assert "Traceback" not in result.output


def test_a_database_driver_that_is_not_installed(clean_env: dict[str, str | None]) -> None:
    # aiomysql is not among the project's extras: its absence is the same everywhere.
    assert importlib.util.find_spec("aiomysql") is None
    env = {
        **clean_env,
        "CCAT_BUFFERING_SITE_NAME": "cerro",
        "CCAT_BUFFERING_DATABASE_URL": "mysql+aiomysql://ops@h/ops",
    }
    _fails(["worker", "--models", MODELS], env, 2, "needs the aiomysql driver")


def test_interval_has_a_minimum(clean_env: dict[str, str | None]) -> None:
    result = CliRunner().invoke(app, ["status", "--watch", "--interval", "0"], env=clean_env)
    assert result.exit_code == 2 and "--interval" in result.output


# --- Flags people expect ---


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("ccat-buffering ")


def test_shell_completion_is_offered() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output


def test_help_shows_flags_as_flags_and_the_global_options() -> None:
    commands = [
        ["status"], ["inspect"], ["worker"], ["simulate"], ["db", "init"],
        ["dlq", "list"], ["dlq", "show"], ["dlq", "replay"], ["dlq", "purge"], ["keys", "audit"],
    ]  # fmt: skip
    for argv in commands:
        result = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, result.output
        for option in ("--site", "--backend-url", "--database-url", "--replica-url"):
            assert option in result.output, (argv, option)
        if argv[0] not in ("simulate",):
            assert "--config" in result.output, argv
        if argv[0] != "worker":
            assert "--json" in result.output, argv


def test_operator_commands_create_no_database_engine(
    clean_env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ccat_buffering.cli._operator as operator

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an operator command opened a database")

    monkeypatch.setattr(operator, "create_engine", refuse)
    env = {**clean_env, "CCAT_BUFFERING_SITE_NAME": "cerro"}
    for argv in (["status", "--json"], ["dlq", "list", "--json"], ["keys", "audit", "--json"]):
        result = CliRunner().invoke(app, argv, env=env)
        assert result.exit_code == 0, (argv, result.output)
        json.loads(result.stdout)
    result = CliRunner().invoke(app, ["inspect", "nope", "--json"], env=env)
    assert result.exit_code == 1 and json.loads(result.stdout)["error"]["type"] == "NotFound"


def test_simulate_cleans_up_its_redis_site_unless_keep() -> None:
    import redis
    from services import REDIS_URL, missing

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing(f"no Redis at {REDIS_URL}: {exc}")
    sites = {"gone": f"sim-{os.getpid()}-a", "kept": f"sim-{os.getpid()}-b"}
    try:
        for name, site in sites.items():
            argv = ["simulate", "--observations", "10", "--poison", "1", "--json"]
            argv += ["--backend-url", REDIS_URL, "--site", site]
            result = CliRunner().invoke(app, [*argv, "--keep"] if name == "kept" else argv)
            assert result.exit_code == 0, result.output
        assert not list(client.scan_iter(match=f"site:{{{sites['gone']}}}:*", count=1000))
        assert list(client.scan_iter(match=f"site:{{{sites['kept']}}}:*", count=1000))
    finally:
        keys = list(client.scan_iter(match=f"site:{{{sites['kept']}}}:*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()


def test_models_that_cannot_be_imported(clean_env: dict[str, str | None], tmp_path: Path) -> None:
    env = {
        **clean_env,
        "CCAT_BUFFERING_SITE_NAME": "cerro",
        "CCAT_BUFFERING_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}",
    }
    _fails(["worker", "--models", "no_such_module:Base"], env, 2, "no_such_module:Base")


def test_from_settings_without_a_site_says_which_variable(
    clean_env: dict[str, str | None],
) -> None:
    from ccat_buffering.errors import ConfigurationError
    from ccat_buffering.site.coordinator import BufferingCoordinator
    from ccat_buffering.write.registry import ModelRegistry

    with pytest.raises(ConfigurationError, match="CCAT_BUFFERING_SITE_NAME"):
        BufferingCoordinator.from_settings(registry=ModelRegistry())
