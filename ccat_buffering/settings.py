"""Settings of one site, from ``CCAT_BUFFERING_*`` variables, ``.env`` and TOML.

Sources, strongest first: keyword arguments, environment variables, the
``.env`` file, the TOML file named by ``CCAT_BUFFERING_CONFIG_FILE`` (default
``ccat-buffering.toml`` in the working directory, if present), then the
defaults below, which are the origin's where it had one.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ccat_buffering.models import DEFAULT_MAX_PAYLOAD_BYTES, check_identifier

__all__ = ["BufferingSettings", "mask_text", "mask_url"]

CONFIG_FILE_VARIABLE = "CCAT_BUFFERING_CONFIG_FILE"
DEFAULT_CONFIG_FILE = "ccat-buffering.toml"


def mask_url(url: str | None) -> str | None:
    """Hide the password in a URL, for logs, status output and error messages.

    Args:
        url: A backend or database URL.

    Returns:
        The URL with any password replaced by ``***``.
    """
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


_CREDENTIALS = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^\s:/@]*:)[^\s@/]+@")


def mask_text(text: str) -> str:
    """Hide every URL password inside free text (an error message, a log line).

    Args:
        text: Any text.

    Returns:
        The text with ``scheme://user:password@`` shown as ``scheme://user:***@``.
    """
    return _CREDENTIALS.sub(r"\1***@", text)


def _site_name(value: str) -> str:
    try:
        return check_identifier(value, "site name")
    except ValueError as exc:
        raise ValueError(str(exc)) from None


class BufferingSettings(BaseSettings):
    """Everything a site needs to buffer, drain and confirm.

    Attributes:
        site_name: Names the site's keys in the backend (a plain identifier).
        site_type: ``secondary`` buffers writes; ``main`` executes them directly.
        backend_url: ``memory://``, ``redis://``, ``rediss://``,
            ``redis+sentinel://`` or ``redis+cluster://``.
        database_url: The main database (SQLAlchemy async URL).
        replica_url: The site's read-only replica; without one, reads and
            replication checks use the main database.
        batch_size: Transactions applied per database transaction.
        max_attempts: Attempts before a data error is dead-lettered (origin: 3).
        retry_base_delay: Seconds before the first retry (origin: 5).
        retry_max_delay: Longest wait between retries.
        outage_base_delay: First pause when the database is unreachable.
        outage_max_delay: Longest pause while it stays unreachable.
        poll_interval: Seconds the processor waits when the buffer is empty.
        replication_poll_interval: Seconds between replica polls (origin: 0.1).
        replication_timeout: Seconds before a pending commit is reported as
            lagging (origin: 30).
        status_ttl: Seconds a finished status is kept (origin: 3,600).
        cache_ttl: Seconds buffered records live unless extended.
        claim_lease: Seconds a claim holds before recovery may undo it.
        processor_lease: Seconds the site's processor lease lasts unless renewed.
        max_payload_bytes: Largest serialised transaction accepted (1 MiB).
        ledger: Record applied transactions (exactly-once effect).
        models: Where the worker finds the mapped classes: ``package.module:Base``.
        read_timeout: Seconds a read may wait for the site's database before
            it counts as unavailable.
        read_allow_partial: When the site's database cannot be read, reads
            answer from the buffer alone, marked partial, instead of raising.
    """

    model_config = SettingsConfigDict(
        env_prefix="CCAT_BUFFERING_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    site_name: Annotated[str, AfterValidator(_site_name)] = "site"
    site_type: Literal["main", "secondary"] = "secondary"
    backend_url: str = "memory://"
    database_url: str = "sqlite+aiosqlite:///ccat_buffering.db"
    replica_url: str | None = None
    batch_size: int = Field(100, ge=1)
    max_attempts: int = Field(3, ge=1)
    retry_base_delay: float = Field(5.0, ge=0)
    retry_max_delay: float = Field(300.0, ge=0)
    outage_base_delay: float = Field(1.0, gt=0)
    outage_max_delay: float = Field(60.0, gt=0)
    poll_interval: float = Field(0.1, gt=0)
    replication_poll_interval: float = Field(0.1, gt=0)
    replication_timeout: float = Field(30.0, gt=0)
    status_ttl: float = Field(3600.0, gt=0)
    cache_ttl: float = Field(3600.0, gt=0)
    claim_lease: float = Field(60.0, gt=0)
    processor_lease: float = Field(15.0, gt=0)
    max_payload_bytes: int = Field(DEFAULT_MAX_PAYLOAD_BYTES, ge=1)
    ledger: bool = True
    models: str | None = None

    # Reads (issue #13): reads never hang on the site's database.
    read_timeout: float = Field(5.0, gt=0)
    read_allow_partial: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Add the TOML file below the environment and ``.env``."""
        path = os.environ.get(CONFIG_FILE_VARIABLE, DEFAULT_CONFIG_FILE)
        toml = TomlConfigSettingsSource(settings_cls, toml_file=path)
        return init_settings, env_settings, dotenv_settings, toml, file_secret_settings

    def masked(self) -> dict[str, object]:
        """The settings with passwords in URLs hidden, for display."""
        data = self.model_dump()
        for name in ("backend_url", "database_url", "replica_url"):
            data[name] = mask_url(data[name])
        return data
