"""Turn a backend URL into a redis-py asyncio client, and say where it points.

``redis://``, ``rediss://`` (TLS) and ``unix://`` go to ``Redis.from_url``;
``redis+cluster://host:port[,host:port...]`` opens a cluster client from
startup nodes; ``redis+sentinel://[:password@]host:port[,...]/service[/db]``
asks the sentinels for the service's master and follows failovers.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ccat_buffering.errors import ConfigurationError
from ccat_buffering.settings import mask_url

__all__ = ["open_client"]


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for part in netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        hosts.append((host or "127.0.0.1", int(port) if port else default_port))
    return hosts


def _password(netloc: str) -> tuple[str | None, str | None]:
    if "@" not in netloc:
        return None, None
    credentials = netloc.rsplit("@", 1)[0]
    user, _, password = credentials.partition(":")
    return unquote(user) or None, unquote(password) or None


def open_client(url: str, **options: Any) -> tuple[Redis | RedisCluster, str]:
    """Open a client for ``url``.

    Args:
        url: A backend URL.
        **options: Passed to the client (e.g. ``socket_timeout``).

    Returns:
        The client and a description of where it points, password masked.

    Raises:
        ConfigurationError: The URL's scheme or form is not understood.
    """
    # A lost reply must reach the caller: redis-py's own retry would run a
    # script a second time (claim more, push twice) without telling anyone.
    options.setdefault("retry", Retry(NoBackoff(), 0))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    where = mask_url(url) or url
    if scheme in ("redis", "rediss", "unix"):
        return Redis.from_url(url, **options), where
    user, password = _password(parts.netloc)
    if scheme == "redis+cluster":
        nodes = [ClusterNode(host, port) for host, port in _hosts(parts.netloc, 6379)]
        cluster = RedisCluster(
            startup_nodes=nodes,
            username=user,
            password=password,
            ssl=parse_qs(parts.query).get("ssl", ["false"])[0] == "true",
            **options,
        )
        return cluster, where
    if scheme == "redis+sentinel":
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ConfigurationError(
                f"{where}: a sentinel URL names its service: redis+sentinel://host:26379/mymaster"
            )
        service = path[0]
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            _hosts(parts.netloc, 26379),
            sentinel_kwargs={"username": user, "password": password} if password else None,
            password=password,
            username=user,
            db=db,
            **options,
        )
        return sentinel.master_for(service), where
    raise ConfigurationError(f"{where}: not a Redis URL")
