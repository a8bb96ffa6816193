"""libpq's TLS parameters for asyncpg, which takes an ``ssl`` argument instead.

psycopg hands ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey`` (in the
URL or the engine's ``connect_args``) to libpq, which understands them.
SQLAlchemy passes the same parameters to ``asyncpg.connect`` as keyword
arguments, which it refuses. So for asyncpg they are taken off the URL and
the ``connect_args`` and turned into the ``ssl`` argument, with libpq's
meaning: ``disable`` no TLS; ``allow``/``prefer`` TLS if the server offers it,
unverified; ``require`` TLS, unverified unless a root certificate is given
(then as ``verify-ca``); ``verify-ca`` the chain; ``verify-full`` the chain
and the host name. ``sslrootcert=system`` uses the system's CAs.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from ccat_buffering.errors import ConfigurationError

__all__ = ["LIBPQ_TLS", "asyncpg_tls"]

LIBPQ_TLS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword")
"""The libpq parameters turned into asyncpg's ``ssl`` argument."""

_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def asyncpg_tls(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Move libpq's TLS parameters of an asyncpg URL and its options into ``ssl``.

    Args:
        url: An SQLAlchemy URL; left alone unless its driver is asyncpg.
        options: The engine's options (``connect_args`` may hold parameters).

    Returns:
        The URL and the options, the parameters replaced by ``connect_args["ssl"]``
        (an ``ssl=`` given in ``connect_args`` wins).

    Raises:
        ConfigurationError: An unknown ``sslmode``, or a certificate file that
            cannot be read.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_driver_name() != "asyncpg":
        return url, options
    connect_args = dict(options.get("connect_args", {}))
    params: dict[str, str] = {}
    for name in LIBPQ_TLS:
        value = parsed.query.get(name)
        if value is not None:
            params[name] = value[-1] if isinstance(value, tuple) else value
        if name in connect_args:
            params[name] = str(connect_args.pop(name))
    if not params:
        return url, options
    url = parsed.difference_update_query(list(params)).render_as_string(hide_password=False)
    connect_args.setdefault("ssl", _ssl_argument(params))
    return url, {**options, "connect_args": connect_args}


def _ssl_argument(params: dict[str, str]) -> ssl.SSLContext | str | bool:
    mode = params.get("sslmode", "prefer")
    if mode not in _MODES:
        raise ConfigurationError(f"sslmode={mode!r}: use one of {', '.join(_MODES)}")
    root = params.get("sslrootcert")
    if mode == "disable":
        return False
    if mode in ("allow", "prefer") and "sslcert" not in params:
        return mode  # asyncpg's own: TLS when offered, not verified
    verify = mode in ("verify-ca", "verify-full") or (mode == "require" and root is not None)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = mode == "verify-full"
    if verify:
        if root is None:
            raise ConfigurationError(
                f"sslmode={mode} verifies the server's certificate: name the CA with "
                "sslrootcert=<file> (or sslrootcert=system)"
            )
        if root != "system":
            _load(context.load_verify_locations, "sslrootcert", root)
    else:
        context.verify_mode = ssl.CERT_NONE
    if "sslcert" in params:
        key = params.get("sslkey")
        _load(
            lambda path: context.load_cert_chain(path, key, params.get("sslpassword")),
            "sslcert",
            params["sslcert"],
        )
    return context


def _load(load: Any, name: str, path: str) -> None:
    if not Path(path).is_file():
        raise ConfigurationError(f"{name}={path!r}: no such file")
    try:
        load(path)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"{name}={path!r} cannot be used: {exc}") from exc
