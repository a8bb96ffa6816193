"""TLS everywhere a URL goes, with a private CA made by the test and servers it starts.

Redis (standalone, Sentinel, Cluster) serving TLS only with client
certificates required; PostgreSQL taking TLS connections only, client
certificates verified. Each is reached with the CA and the client's
certificate named in the URL (or the engine options), as the docs show.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from redis_servers import ThrowawayRedis, redis_cluster, redis_sentinel
from servers import tls_postgres
from services import REDIS_URL, require_redis, started
from tls import TLSFiles, private_ca
from typer.testing import CliRunner

from ccat_buffering.cli import app
from ccat_buffering.database import create_engine
from ccat_buffering.errors import ConfigurationError
from ccat_buffering.manager import TransactionManager
from ccat_buffering.testing import new_site_name
from ccat_buffering_redis import RedisBackend

from support import observation, sqlite_url


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return private_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return private_ca(tmp_path_factory.mktemp("other-ca"))


def _redis_tls(files: TLSFiles) -> str:
    return (
        f"ssl_ca_certs={files.ca}&ssl_certfile={files.client_cert}"
        f"&ssl_keyfile={files.client_key}&ssl_cert_reqs=required"
    )


async def _buffers(url: str) -> None:
    async with RedisBackend.from_url(url, site=new_site_name()) as backend:
        await TransactionManager(backend).buffer(observation(1)[0])
        assert (await backend.buffer.stats()).depth == 1


async def test_rediss_with_a_private_ca_and_a_client_certificate(ca: TLSFiles) -> None:
    with started(ThrowawayRedis(tls=ca)) as server:
        await _buffers(server.url)


async def test_sentinel_over_tls_to_the_sentinels_and_the_master(ca: TLSFiles) -> None:
    with started(redis_sentinel(tls=ca)) as ports:
        url = f"redis+sentinel://127.0.0.1:{ports['sentinel']}/site-buffer?{_redis_tls(ca)}"
        await _buffers(url)
        # Without TLS the sentinels do not answer: no master is found.
        plain = f"redis+sentinel://127.0.0.1:{ports['sentinel']}/site-buffer?socket_timeout=1"
        with pytest.raises(Exception, match=r"(?i)master|reach|closed|reset"):
            await _buffers(plain)


async def test_sentinel_over_tls_with_a_password(ca: TLSFiles, tmp_path: Path) -> None:
    # The documented production form: password in the user-info, TLS parameters in the query;
    # the password goes to the sentinels and to the master, both over TLS.
    password = "s3cret-sentinel-pw"
    with started(redis_sentinel(tls=ca, password=password)) as ports:
        url = (
            f"redis+sentinel://:{password}@127.0.0.1:{ports['sentinel']}/site-buffer"
            f"?{_redis_tls(ca)}"
        )
        site = new_site_name()
        async with RedisBackend.from_url(url, site=site) as backend:
            buffered = await TransactionManager(backend).buffer(observation(1)[0])
            read = await backend.status.get(buffered.transaction_id)
            assert read is not None and read.state == "buffered"
        env = {
            "CCAT_BUFFERING_SITE_NAME": site,
            "CCAT_BUFFERING_SITE_TYPE": "secondary",
            "CCAT_BUFFERING_BACKEND_URL": url,
            "CCAT_BUFFERING_DATABASE_URL": sqlite_url(tmp_path),
            "CCAT_BUFFERING_STATE_DIR": str(tmp_path),
        }
        result = await asyncio.to_thread(CliRunner().invoke, app, ["status", "--json"], env=env)
        assert result.exit_code in (0, 1), result.output
        assert password not in result.output
        shown = json.loads(result.stdout)
        assert shown["backend"].startswith("redis+sentinel://") and "***" in shown["backend"]
        assert f"127.0.0.1:{ports['sentinel']}/site-buffer" in shown["backend"]
        assert shown["buffer"]["depth"] == 1, shown["buffer"]


async def test_cluster_over_tls_with_a_private_ca(ca: TLSFiles, other_ca: TLSFiles) -> None:
    with started(redis_cluster(tls=ca)) as ports:
        await _buffers(f"redis+cluster://127.0.0.1:{ports[0]}?{_redis_tls(ca)}")
        with pytest.raises(Exception, match=r"(?i)certificate|reach|ssl"):
            await _buffers(f"redis+cluster://127.0.0.1:{ports[0]}?{_redis_tls(other_ca)}")


def test_a_bad_tls_parameter_is_named() -> None:
    with pytest.raises(ConfigurationError, match="ssl_cert_reqs"):
        RedisBackend.from_url("redis+cluster://127.0.0.1:1?ssl_cert_reqs=maybe", site="s")


@pytest.fixture(scope="module")
def tls_pg(ca: TLSFiles) -> Iterator[int]:
    with started(tls_postgres(ca)) as port:
        yield port


def _libpq(files: TLSFiles, mode: str = "verify-full") -> dict[str, str]:
    return {
        "sslmode": mode,
        "sslrootcert": str(files.ca),
        "sslcert": str(files.client_cert),
        "sslkey": str(files.client_key),
    }


async def _uses_tls(url: str, **options: object) -> bool:
    engine = create_engine(url, **options)
    try:
        async with engine.connect() as conn:
            query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            return bool((await conn.execute(sa.text(query))).scalar())
    finally:
        await engine.dispose()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_postgres_tls_from_the_url_and_from_engine_options(
    driver: str, ca: TLSFiles, other_ca: TLSFiles, tls_pg: int
) -> None:
    base = f"postgresql+{driver}://postgres@127.0.0.1:{tls_pg}/postgres"
    query = "&".join(f"{k}={v}" for k, v in _libpq(ca).items())
    assert await _uses_tls(f"{base}?{query}")
    assert await _uses_tls(base, connect_args=_libpq(ca))
    # Another CA's server certificate is refused; so is a connection without TLS.
    with pytest.raises(Exception, match=r"(?i)certificate|verify"):
        await _uses_tls(base, connect_args={**_libpq(ca), "sslrootcert": str(other_ca.ca)})
    with pytest.raises(Exception, match=r"(?i)no pg_hba|rejected|SSL off|ssl"):
        await _uses_tls(base, connect_args={"sslmode": "disable"})


def test_a_bad_sslmode_is_named(ca: TLSFiles) -> None:
    with pytest.raises(ConfigurationError, match="sslmode"):
        create_engine("postgresql+asyncpg://u@127.0.0.1:1/d?sslmode=sometimes")
    with pytest.raises(ConfigurationError, match="sslrootcert"):
        create_engine("postgresql+asyncpg://u@127.0.0.1:1/d?sslmode=verify-full")


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_db_init_and_status_take_the_engine_options(
    driver: str, ca: TLSFiles, tls_pg: int, tmp_path: Path
) -> None:
    await require_redis()
    env = {
        "CCAT_BUFFERING_SITE_NAME": new_site_name(),
        "CCAT_BUFFERING_SITE_TYPE": "secondary",
        "CCAT_BUFFERING_BACKEND_URL": "memory://",
        "CCAT_BUFFERING_DATABASE_URL": f"postgresql+{driver}://postgres@127.0.0.1:{tls_pg}/postgres",
        "CCAT_BUFFERING_DATABASE_ENGINE_OPTIONS": json.dumps({"connect_args": _libpq(ca)}),
        "CCAT_BUFFERING_STATE_DIR": str(tmp_path),
    }
    result = await asyncio.to_thread(CliRunner().invoke, app, ["db", "init"], env=env)
    assert result.exit_code == 0, result.output
    assert "ledger table" in result.output
    # status opens the main database to check the buffer for lost state, with TLS.
    env["CCAT_BUFFERING_BACKEND_URL"] = REDIS_URL
    result = await asyncio.to_thread(CliRunner().invoke, app, ["status", "--json"], env=env)
    assert result.exit_code in (0, 1), result.output
    assert "could not check the buffer" not in result.output
    assert not any("lost state" in w for w in json.loads(result.stdout)["warnings"])
