"""Checks of the settings' URLs, and short messages for invalid settings.

A URL is checked when the settings are read, so that a typo fails at once
with the setting's name instead of connecting somewhere else (``redis:/host``
parses as a path and would reach db 0 on localhost) or failing deep inside a
driver. Whether a database driver is installed is checked only when the URL
is about to be opened: a command that reads only the buffer needs none.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from ccat_buffering.errors import ConfigurationError
from ccat_buffering.masking import mask_url

__all__ = ["check_backend_url", "check_database_url", "check_driver", "explain"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+._-]*)://")
_PREFIX = "CCAT_BUFFERING_"
# The options of the command that set a setting, to name them in messages.
_OPTIONS = {
    "site_name": "--site",
    "backend_url": "--backend-url",
    "database_url": "--database-url",
    "replica_url": "--replica-url",
}
# Async drivers: module to import and the extra that installs it.
_DRIVERS = {
    "asyncpg": ("asyncpg", "postgres"),
    "aiosqlite": ("aiosqlite", "sqlite"),
    "psycopg": ("psycopg", "postgres"),
    "psycopg_async": ("psycopg", "postgres"),
    "aiomysql": ("aiomysql", None),
    "asyncmy": ("asyncmy", None),
}
_SYNC_DEFAULTS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}


def _masked(url: str) -> str:
    return mask_url(url) or ""


def _scheme(url: str, what: str, example: str) -> str:
    match = _SCHEME.match(url)
    if match is None:
        raise ValueError(
            f"{what} {_masked(url)!r} is malformed (no scheme://): write it as {example}"
        )
    scheme = match.group(1).lower()
    if scheme.endswith(("+sentinel", "+cluster")):
        return scheme  # host:port,host:port,...: the client parses the list
    try:
        urlsplit(url).port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        # urlsplit's message quotes what it took for the port: with an unencoded
        # password that is a piece of the password, so it is not shown.
        raise ValueError(
            f"{what} {_masked(url)!r} is malformed: its port is not a number from 0 to 65535 "
            "(a password holding @ : / ? or # must be percent-encoded, e.g. @ as %40)"
        ) from None
    return scheme


def check_backend_url(url: str) -> str:
    """Refuse a backend URL that is malformed or names no installed backend.

    Args:
        url: The ``backend_url`` setting.

    Returns:
        The URL, unchanged.

    Raises:
        ValueError: The URL has no ``scheme://``, a bad port or Redis
            database number, or a scheme no backend is registered for.
    """
    scheme = _scheme(url, "backend URL", "redis://127.0.0.1:6379/0 or memory://")
    known = sorted(ep.name for ep in entry_points(group="ccat_buffering.backends"))
    if scheme not in known:
        listed = ", ".join(f"{name}://" for name in known) or "none"
        raise ValueError(
            f"backend URL {_masked(url)!r} has the unknown scheme {scheme}://: use one of {listed}"
        )
    if scheme in ("redis", "rediss"):
        path = urlsplit(url).path.strip("/")
        if path and not path.isdigit():
            raise ValueError(
                f"backend URL {_masked(url)!r} names the Redis database {path!r}, "
                "which is not a number: write redis://host:port/<0-15>"
            )
    return url


def check_database_url(url: str | None) -> str | None:
    """Refuse a database URL that is malformed or names a synchronous driver.

    Args:
        url: The ``database_url`` or ``replica_url`` setting.

    Returns:
        The URL, unchanged.

    Raises:
        ValueError: The URL has no ``scheme://``, uses ``postgres://``, or
            names no async driver (``postgresql://`` means psycopg2).
    """
    if url is None:
        return None
    example = "postgresql+asyncpg://user@host/db"
    scheme = _scheme(url, "database URL", example)
    dialect, _, driver = scheme.partition("+")
    if dialect == "postgres":
        fixed = "postgresql+asyncpg://" + _masked(url).split("://", 1)[1]
        raise ValueError(
            f"database URL {_masked(url)!r} uses postgres://, which SQLAlchemy does not "
            f"know: write {fixed!r}"
        )
    if not driver and dialect in _SYNC_DEFAULTS:
        raise ValueError(
            f"database URL {_masked(url)!r} names no async driver: write "
            f"{dialect}+{_SYNC_DEFAULTS[dialect]}://..."
        )
    if driver in ("psycopg2", "pysqlite", "pg8000"):
        raise ValueError(
            f"database URL {_masked(url)!r} names the synchronous driver {driver}: write "
            f"{dialect}+{_SYNC_DEFAULTS.get(dialect, 'asyncpg')}://..."
        )
    return url


def check_driver(name: str, url: str) -> None:
    """Refuse to open a database URL whose driver is not installed.

    Args:
        name: The setting (``database_url`` or ``replica_url``).
        url: Its value.

    Raises:
        ConfigurationError: The driver's module cannot be found; the message
            names the extra that installs it.
    """
    match = _SCHEME.match(url)  # urlsplit drops a scheme with "_" (psycopg_async)
    driver = "" if match is None else match.group(1).partition("+")[2].lower()
    module, extra = _DRIVERS.get(driver, (None, None))
    if module is None or importlib.util.find_spec(module) is not None:
        return
    how = f"pip install 'ccat-buffering[{extra}]'" if extra else f"pip install {module}"
    raise ConfigurationError(
        f"{name} {_masked(url)!r} needs the {driver} driver, which is not installed: {how}"
    )


def _source(field: str, overrides: Mapping[str, Any]) -> str:
    if field in overrides and field in _OPTIONS:
        return _OPTIONS[field]
    return f"{_PREFIX}{field.upper()}"


def _missing_site(overrides: Mapping[str, Any]) -> str:
    known = ["SITE_NAME"]
    typos = [
        name
        for name in os.environ
        if name.startswith(_PREFIX)
        and difflib.get_close_matches(name.removeprefix(_PREFIX), known, cutoff=0.6)
        and name != f"{_PREFIX}SITE_NAME"
    ]
    hint = f" ({', '.join(sorted(typos))} is set: a typo?)" if typos else ""
    return (
        f"no site name{hint}: set CCAT_BUFFERING_SITE_NAME or pass --site "
        f"(or site_name in ccat-buffering.toml or .env, read from {os.getcwd()})"
    )


def explain(exc: ValidationError, overrides: Mapping[str, Any]) -> str:
    """One line per invalid setting: its name, its value (masked) and what to do.

    Args:
        exc: Pydantic's error for the settings.
        overrides: Values given as keyword arguments (command-line options).

    Returns:
        The message, without a traceback's worth of pydantic detail.
    """
    lines = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else "settings"
        if error["type"] == "missing":
            lines.append(
                _missing_site(overrides) if field == "site_name" else f"{field} is required"
            )
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        value = error.get("input")
        shown = repr(_masked(value)) if isinstance(value, str) else repr(value)
        if field.endswith("_url") and isinstance(value, str):
            lines.append(f"{_source(field, overrides)}: {message}")
        else:
            lines.append(
                f"{_source(field, overrides)}={shown!s}: {message}; "
                f"fix {field} in the environment, .env or ccat-buffering.toml"
                if field not in overrides
                else f"{_source(field, overrides)} {shown}: {message}"
            )
    return "\n".join(lines[:2]) + (f"\n(and {len(lines) - 2} more)" if len(lines) > 2 else "")
