"""Turn a backend URL into a redis-py asyncio client, and say where it points.

``redis://``, ``rediss://`` (TLS) and ``unix://`` go to ``Redis.from_url``;
``redis+cluster://host:port[,host:port...]`` opens a cluster client from
startup nodes; ``redis+sentinel://[:password@]host:port[,...]/service[/db]``
asks every sentinel for the service's master, follows the newest answer
(``ccat_buffering_redis._sentinel``) and follows failovers. The last
two take TLS from ``ssl=true`` and redis-py's ``ssl_*`` options as URL
parameters (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs``, ``ssl_check_hostname``); Sentinel uses them towards the
sentinels and the master.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ccat_buffering.errors import ConfigurationError
from ccat_buffering.masking import mask_url
from ccat_buffering_redis._sentinel import DISCOVERY_TIMEOUT, NewestMasterSentinel

__all__ = ["open_client", "take_compression", "take_parameter"]


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


CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection, unless the options or the URL say otherwise."""

SOCKET_TIMEOUT = 5.0
"""Seconds to wait for a reply, unless the options or the URL say otherwise."""

_TIMEOUTS = ("socket_timeout", "socket_connect_timeout")


def _timeouts(url: str, query: str, options: dict[str, Any]) -> None:
    """Bounded waits by default: a hung Redis (SIGSTOP, a dropped link) must not hang callers.

    ``socket_timeout`` and ``socket_connect_timeout`` URL parameters win over
    the options, which win over the defaults; ``none`` turns a timeout off.
    """
    options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    options.setdefault("socket_timeout", SOCKET_TIMEOUT)
    for name, values in parse_qs(query).items():
        if name not in _TIMEOUTS:
            continue
        text = values[-1]
        if text.lower() == "none":
            options[name] = None
            continue
        try:
            seconds = float(text)
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise ConfigurationError(
                f"{mask_url(url)}: {name}={text!r} is not a number of seconds above 0 (or none)"
            )
        options[name] = seconds


def _without_timeouts(url: str) -> str:
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k not in _TIMEOUTS]
    if len(kept) == len(pairs):
        return url
    return urlunsplit(parts._replace(query=urlencode(kept)))


_TLS_TEXT = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path", "ssl_password")
_TLS_FLAGS = ("ssl", "ssl_check_hostname")
_CERT_REQS = ("none", "optional", "required")


def _tls(url: str, query: str, options: dict[str, Any]) -> dict[str, Any]:
    """The TLS options of a cluster or Sentinel URL (``rediss://`` reads its own).

    ``ssl=true`` turns TLS on; ``ssl_ca_certs``, ``ssl_certfile``,
    ``ssl_keyfile``, ``ssl_cert_reqs`` and ``ssl_check_hostname`` (any of them
    also turns it on) are redis-py's options of the same names. Options given
    in code win over the URL.

    Raises:
        ConfigurationError: A flag that is not true or false, or an unknown
            ``ssl_cert_reqs``.
    """
    found: dict[str, Any] = {}
    for name, values in parse_qs(query).items():
        value = values[-1]
        if name in _TLS_TEXT:
            found[name] = value
        elif name in _TLS_FLAGS:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigurationError(f"{mask_url(url)}: {name}={value!r}: use true or false")
            found[name] = value.lower() in ("true", "1", "yes")
        elif name == "ssl_cert_reqs":
            if value.lower() not in _CERT_REQS:
                raise ConfigurationError(
                    f"{mask_url(url)}: ssl_cert_reqs={value!r}: use one of {', '.join(_CERT_REQS)}"
                )
            found[name] = value.lower()
    if found and "ssl" not in found:
        found["ssl"] = True
    tls = {**found, **{k: v for k, v in options.items() if k.startswith("ssl")}}
    for name in tls:
        options.pop(name, None)
    return tls if tls.get("ssl") else {}


def open_client(url: str, **options: Any) -> tuple[Redis | RedisCluster, str]:
    """Open a client for ``url``.

    Connect and socket timeouts are on by default (:data:`CONNECT_TIMEOUT`,
    :data:`SOCKET_TIMEOUT`); ``socket_timeout`` and ``socket_connect_timeout``
    in the options or as URL parameters change them.

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
    _timeouts(url, parts.query, options)
    url = _without_timeouts(url)
    parts = urlsplit(url)
    if scheme in ("redis", "rediss", "unix"):
        return Redis.from_url(url, **options), where
    user, password = _password(parts.netloc)
    tls = _tls(url, parts.query, options)
    if scheme == "redis+cluster":
        nodes = [ClusterNode(host, port) for host, port in _hosts(parts.netloc, 6379)]
        cluster = RedisCluster(
            startup_nodes=nodes, username=user, password=password, **tls, **options
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
        # Every sentinel is asked and the newest answer (config-epoch) wins:
        # redis-py's own follows the first to answer, stale or not.
        bound = options["socket_timeout"]
        sentinel = NewestMasterSentinel(
            _hosts(parts.netloc, 26379),
            timeout=DISCOVERY_TIMEOUT if bound is None else min(bound, DISCOVERY_TIMEOUT),
            # TLS to the sentinels and to the master alike (``tls-replication``
            # and a Sentinel with ``tls-port`` serve one CA).
            sentinel_kwargs={
                **({"username": user, "password": password} if password else {}),
                **{name: options[name] for name in _TIMEOUTS},
                **tls,
                # Once, at once (a pooled connection the sentinel dropped): redis-py's
                # backoff would outlast the discovery's bound and hide the real error.
                "retry": Retry(NoBackoff(), 1),
            },
            password=password,
            username=user,
            db=db,
            **tls,
            **options,
        )
        return sentinel.master_for(service), where
    raise ConfigurationError(f"{where}: not a Redis URL")


def take_compression(url: str) -> tuple[str, str | None]:
    """Split the ``compression`` query parameter off a backend URL (the rest unchanged)."""
    url, value = take_parameter(url, "compression")
    return url, value or None


def take_parameter(url: str, name: str) -> tuple[str, str | None]:
    """Split one of the library's query parameters off a backend URL (the rest unchanged)."""
    base, mark, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k != name]
    if not mark or len(kept) == len(pairs):
        return url, None
    value = [v for k, v in pairs if k == name][-1]
    return (base + "?" + urlencode(kept) if kept else base), value
