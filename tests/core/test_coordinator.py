"""BufferingCoordinator, settings, backends by URL, and the retry policy."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

from ccat_buffering import BufferingCoordinator, BufferingSettings, open_backend
from ccat_buffering.buffer.retry import FailureKind, RetryPolicy, classify_failure
from ccat_buffering.demo.example import Base, ExecutedObsUnit
from ccat_buffering.errors import ConfigurationError, DatabaseUnavailableError
from ccat_buffering.masking import mask_url
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend

from support import make_schema, observation


def _settings(tmp_path: Path, **overrides: object) -> BufferingSettings:
    values: dict[str, object] = {
        "site_name": "cerro-chajnantor",
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'main.db'}",
        "poll_interval": 0.01,
        "replication_poll_interval": 0.01,
        **overrides,
    }
    return BufferingSettings(**values)  # type: ignore[arg-type]


async def _wait_for_state(site: BufferingCoordinator, tx_id: str, state: TransactionState) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        status = await site.status(tx_id)
        if status is not None and status.state is state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{tx_id} did not reach {state} in time: {await site.status(tx_id)}")


async def test_secondary_site_buffers_then_drains_and_replicates(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    registry = ModelRegistry.from_base(Base)
    async with BufferingCoordinator.from_settings(settings, registry=registry, start=False) as site:
        await make_schema(site.engine)
        await site.prepare_database()
        tx, obs_id = observation(1)
        status = await site.submit(tx)
        assert status.state is TransactionState.BUFFERED
        assert (await site.reads.get("ExecutedObsUnit", obs_id)) is not None
        site.start()
        await _wait_for_state(site, tx.transaction_id, TransactionState.REPLICATED)
        health = await site.health()
        assert health.healthy
        assert health.states["replicated"] == 1
        assert health.processor.processed == 1
    assert isinstance(site.backend, MemoryBackend)


async def test_main_site_writes_directly(tmp_path: Path) -> None:
    settings = _settings(tmp_path, site_type="main")
    registry = ModelRegistry.from_base(Base)
    async with BufferingCoordinator.from_settings(settings, registry=registry, start=False) as site:
        await make_schema(site.engine)
        await site.prepare_database()
        tx, _ = observation(1)
        status = await site.submit(tx)
        assert status.state is TransactionState.COMMITTED
        assert (await site.backend.buffer.stats()).depth == 0
        async with site.engine.connect() as conn:
            assert (await conn.execute(select(func.count(ExecutedObsUnit.id)))).scalar_one() == 1


async def test_health_reports_an_outage_with_masked_urls(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        database_url="sqlite+aiosqlite:////nonexistent-dir/main.db",
        backend_url="memory://",
    )
    async with BufferingCoordinator.from_settings(
        settings, registry=ModelRegistry.from_base(Base), start=False
    ) as site:
        tx, _ = observation(1)
        await site.submit(tx)
        await site.processor.run_once()
        health = await site.health()
        assert not health.healthy
        assert health.processor.state == "paused"
        assert any("database unreachable" in w for w in health.warnings)
        status = await site.status(tx.transaction_id)
        assert status is not None and status.attempts == 0


def test_settings_from_environment_dotenv_and_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "site.toml").write_text(
        'site_name = "from-toml"\nbatch_size = 7\nmax_attempts = 9\n'
    )
    (tmp_path / ".env").write_text("CCAT_BUFFERING_BATCH_SIZE=11\n")
    monkeypatch.setenv("CCAT_BUFFERING_CONFIG_FILE", str(tmp_path / "site.toml"))
    monkeypatch.setenv("CCAT_BUFFERING_MAX_ATTEMPTS", "4")
    settings = BufferingSettings()
    assert settings.site_name == "from-toml"
    assert settings.batch_size == 11  # .env beats TOML
    assert settings.max_attempts == 4  # the environment beats both
    assert settings.retry_base_delay == 5.0 and settings.status_ttl == 3600.0


def test_settings_refuse_a_site_name_that_escapes_keys() -> None:
    with pytest.raises(ValueError, match="site name 'a:b' is not a plain identifier"):
        BufferingSettings(site_name="a:b")


def test_passwords_are_masked() -> None:
    assert mask_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert (
        mask_url("postgresql+asyncpg://ops:s3cret@db.example:5432/ops")
        == "postgresql+asyncpg://ops:***@db.example:5432/ops"
    )
    assert mask_url("memory://") == "memory://"
    settings = BufferingSettings(
        site_name="cerro", database_url="postgresql+asyncpg://ops:s3cret@db/ops"
    )
    assert "s3cret" not in str(settings.masked())


async def test_open_backend_by_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import ccat_buffering.config.backends as backends
    from ccat_buffering_redis import RedisBackend

    backend = open_backend("memory://", site="s1")
    assert isinstance(backend, MemoryBackend) and backend.site == "s1"
    redis_backend = open_backend("redis://127.0.0.1:6379/15", site="s1")
    assert isinstance(redis_backend, RedisBackend)
    await redis_backend.aclose()
    with pytest.raises(ConfigurationError, match=r"known schemes are .*memory://"):
        open_backend("mongodb://u:pw@host/db", site="s1")
    missing_package = EntryPoint(
        "redis", "ccat_buffering_gone:RedisBackend", backends.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(backends, "_entry_points", lambda: {"redis": missing_package})
    with pytest.raises(ConfigurationError, match=r"pip install 'ccat-buffering\[redis\]'"):
        open_backend("redis://u:pw@127.0.0.1:6379/15", site="s1")


def test_retry_policy_full_jitter_with_cap() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=5.0, max_delay=12.0, rng=random.Random(7))
    assert [policy.ceiling(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 12.0, 12.0]
    delays = [policy.delay(2) for _ in range(500)]
    assert all(0 <= d <= 10.0 for d in delays)
    assert min(delays) < 1.0 and max(delays) > 9.0  # spread over the whole range
    assert not policy.exhausted(2) and policy.exhausted(3)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


class _Orig(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("08006", FailureKind.OUTAGE),
        ("57P01", FailureKind.OUTAGE),
        ("57P03", FailureKind.OUTAGE),
        ("25006", FailureKind.OUTAGE),
        ("40001", FailureKind.CONFLICT),
        ("40P01", FailureKind.CONFLICT),
        ("23505", FailureKind.DATA),
        ("22001", FailureKind.DATA),
    ],
)
def test_classify_postgres_errors(sqlstate: str, kind: FailureKind) -> None:
    error = sa_exc.DBAPIError("SELECT 1", {}, _Orig(sqlstate))
    assert classify_failure(error) is kind


def test_classify_other_errors() -> None:
    assert classify_failure(ConnectionRefusedError()) is FailureKind.OUTAGE
    assert classify_failure(DatabaseUnavailableError("x")) is FailureKind.OUTAGE
    assert classify_failure(ConfigurationError("no ledger")) is FailureKind.OUTAGE
    assert (
        classify_failure(sa_exc.IntegrityError("INSERT", {}, Exception("fk"))) is FailureKind.DATA
    )
    assert classify_failure(ValueError("bad")) is FailureKind.DATA
