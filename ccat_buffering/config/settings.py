"""Settings of one site, from ``CCAT_BUFFERING_*`` variables, ``.env`` and TOML.

Sources, strongest first: keyword arguments, environment variables, the
``.env`` file, the TOML file named by ``CCAT_BUFFERING_CONFIG_FILE`` (default
``ccat-buffering.toml`` in the working directory, if present), then the
defaults below, which are the origin's where it had one.

A site has no default name: a misspelt variable or a file left behind in
another directory must fail, not show an empty site called ``site``. The URLs
are checked when the settings are read (a malformed URL, an unknown scheme, a
database URL without its async driver); :func:`load_settings` turns every
such error into a one- or two-line :class:`~ccat_buffering.ConfigurationError`
that names the setting, its value (masked) and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ccat_buffering.config._settings_checks import (
    check_backend_url,
    check_database_url,
    check_driver,
    explain,
)
from ccat_buffering.errors import ConfigurationError
from ccat_buffering.masking import mask_mapping
from ccat_buffering.write.models import DEFAULT_MAX_PAYLOAD_BYTES, check_identifier

__all__ = ["BufferingSettings", "load_settings"]

CONFIG_FILE_VARIABLE = "CCAT_BUFFERING_CONFIG_FILE"
DEFAULT_CONFIG_FILE = "ccat-buffering.toml"


def _site_name(value: str) -> str:
    try:
        return check_identifier(value, "site name")
    except ValueError as exc:
        raise ValueError(str(exc)) from None


class BufferingSettings(BaseSettings):
    """Everything a site needs to buffer, drain and confirm.

    Attributes:
        site_name: Names the site's keys in the backend (a plain identifier);
            required, there is no default.
        site_type: ``secondary`` buffers writes; ``main`` executes them directly.
        backend_url: ``memory://``, ``redis://``, ``rediss://``, ``unix://``,
            ``redis+sentinel://`` or ``redis+cluster://`` (or a third-party
            backend's scheme).
        database_url: The main database (SQLAlchemy async URL:
            ``postgresql+asyncpg://`` or ``sqlite+aiosqlite://``); needed by
            whatever writes to it (the worker, a main site, ``db init``),
            not by the commands that only read the buffer.
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
        redis_allow_eviction: Buffer even on a Redis whose ``maxmemory-policy``
            evicts keys. That loses acknowledged transactions silently.
        redis_min_replicas: Acknowledge a buffered transaction only once this
            many Redis replicas hold it (``WAIT``); ``0`` (the default): once
            the master does. URL parameter ``min_replicas`` wins.
        redis_min_replicas_timeout: Seconds to wait for those replicas before
            ``buffer()`` raises ``WriteNotReplicatedError`` (URL parameter
            ``min_replicas_timeout`` wins).
        state_dir: Where the worker keeps its sightings of the buffer (buffer
            loss detection: they must not depend on the main database);
            ``$XDG_STATE_HOME/ccat-buffering`` or ``~/.local/state/ccat-buffering``
            when unset. A local disk that survives a restart of the worker.
        redis_connect_timeout: Seconds to connect to Redis (URL parameter
            ``socket_connect_timeout`` wins).
        redis_socket_timeout: Seconds to wait for a Redis reply (URL parameter
            ``socket_timeout`` wins).
        connect_timeout: Seconds to open a connection to the main database or
            the replica (PostgreSQL), authentication included.
        statement_timeout: Seconds a call to the database may go unanswered
            (a statement, a pipeline round trip, COMMIT). The client then
            discards the connection and the queue pauses as an outage; the
            server also cancels statements that run longer. Size it to a few
            times the longest healthy batch (see "The round-trip budget").
        lock_timeout: Seconds a processor's statement may wait for a row lock
            (server ``lock_timeout``); a lock held by a stalled worker is then
            a conflict, retried without counting an attempt.
        idle_in_transaction_timeout: Seconds after which the server ends a
            processor session idle inside a transaction (server
            ``idle_in_transaction_session_timeout``), freeing the locks of a
            paused or half-dead worker.
        tcp_keepalive_idle: Seconds of silence before TCP keepalive probes start.
        tcp_keepalive_interval: Seconds between TCP keepalive probes.
        tcp_keepalive_count: Unanswered keepalive probes before the connection
            is dropped; idle + interval x count is also ``TCP_USER_TIMEOUT``.
        outage_probe_interval: While paused by an unreachable database,
            seconds between probes (``SELECT 1``); the drain resumes at the
            first answer.
        batch_size_adaptive: Size batches by the observed round-trip time,
            per-transaction cost and payload bytes, between
            ``batch_size_min`` and ``batch_size_max`` (``batch_size`` is then
            the first batch's size); off, every batch is ``batch_size``.
        batch_size_min: Smallest adaptive batch.
        batch_size_max: Largest adaptive batch.
        batch_max_bytes: Largest adaptive batch in payload bytes.
        batch_prefetch: Claim the next batch while the current one is in
            flight, so that the round trip hides the claim (order holds: it
            goes back behind the current batch when that one pauses or retries).
        database_engine_options: Keyword arguments for the main database's
            engine (``create_async_engine``), as a JSON object in the environment.
        replica_engine_options: Keyword arguments for the replica's engine.
        read_timeout: Seconds a read may wait for the site's database before
            it counts as unavailable.
        read_allow_partial: When the site's database cannot be read, reads
            answer from the buffer alone, marked partial, instead of raising.
        conflict_policies: How conflicts are decided, by ``"Model"`` or
            ``"Model.column"`` (``"*"`` for every model): ``reject`` (the
            default), ``overwrite``, ``newer_wins`` or ``merge``; a JSON object
            in the environment. Policies set in code on the registry come first.
        conflict_write_time: The write-time column of each ``newer_wins``
            model (``{"Observation": "written_at"}``); the library fills it.
        service_drains: Whether a FastAPI service's lifespan drains and
            confirms in its own process. ``None`` (the default): only on the
            ``memory://`` backend, which no other process can reach (the
            embedded demo); with a shared backend the ``ccat-buffering worker``
            drains, and services only submit and read.
        log_handler: Where the library's log records go. ``auto``: to the
            host's handlers when the host configured the root logger, else
            to the library's own handler on standard error (uvicorn configures
            only its own loggers); ``library``: always the library's own
            handler, whatever the host configured; ``host``: always the host's.
        log_format: The library handler's format: ``text`` (``FORMAT``) or
            ``json`` (one object per line).
        log_level: The level of the library's loggers (``INFO``, ...);
            ``None`` leaves it to the host (WARNING by default).
        wait_poll_interval: Seconds between the reads of the shared poller
            that serves every :meth:`~ccat_buffering.BufferingCoordinator.wait`
            of a process (one read of all waited statuses per interval,
            however many waiters).
        idempotency_ttl: Seconds an idempotency key is kept from its first
            use; at least ``status_ttl`` (7 days by default).
        ledger_retention: Seconds an applied transaction's ledger row is kept
            at least (7 days): the oldest buffer backup that may be restored
            without its older transactions being parked as unverifiable.
            Rows of transactions the site still holds are kept however old.
        ledger_prune_interval: Seconds between the worker's pruning runs
            (``0`` switches them off; ``ccat-buffering db prune`` still works).
        ledger_prune_batch: Ledger rows deleted per statement.
        console_credential: The operator credential of the web console (the
            password of HTTP Basic auth, any user name); without it the
            console is read-only.
    """

    model_config = SettingsConfigDict(
        env_prefix="CCAT_BUFFERING_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    site_name: Annotated[str, AfterValidator(_site_name)]
    site_type: Literal["main", "secondary"] = "secondary"
    backend_url: Annotated[str, AfterValidator(check_backend_url)] = "memory://"
    database_url: Annotated[str | None, AfterValidator(check_database_url)] = None
    replica_url: Annotated[str | None, AfterValidator(check_database_url)] = None
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
    # -- Redis: eviction and bounded waits (issue 12) --
    redis_allow_eviction: bool = False
    redis_connect_timeout: float = Field(5.0, gt=0)
    redis_socket_timeout: float = Field(5.0, gt=0)
    # -- Redis: acknowledged means replicated (issue 20) --
    redis_min_replicas: int = Field(0, ge=0)
    redis_min_replicas_timeout: float = Field(1.0, gt=0)
    state_dir: Path | None = None

    def backend_options(self) -> dict[str, object]:
        """Options for the backend's ``from_url``: the Redis settings, for Redis URLs only."""
        if not self.backend_url.lower().startswith(("redis", "rediss", "unix")):
            return {}
        return {
            "allow_eviction": self.redis_allow_eviction,
            "socket_connect_timeout": self.redis_connect_timeout,
            "socket_timeout": self.redis_socket_timeout,
            "min_replicas": self.redis_min_replicas,
            "min_replicas_timeout": self.redis_min_replicas_timeout,
        }

    # -- the link to the main database: timeouts and batch sizing (issue #11) --
    connect_timeout: float = Field(10.0, gt=0)
    statement_timeout: float = Field(30.0, gt=0)
    lock_timeout: float = Field(10.0, gt=0)
    idle_in_transaction_timeout: float = Field(30.0, gt=0)
    tcp_keepalive_idle: float = Field(10.0, gt=0)
    tcp_keepalive_interval: float = Field(5.0, gt=0)
    tcp_keepalive_count: int = Field(3, ge=1)
    outage_probe_interval: float = Field(2.0, gt=0)
    batch_size_adaptive: bool = True
    batch_size_min: int = Field(10, ge=1)
    batch_size_max: int = Field(2000, ge=1)
    batch_max_bytes: int = Field(8 * 1024 * 1024, ge=1)
    batch_prefetch: bool = True
    database_engine_options: dict[str, Any] = {}
    replica_engine_options: dict[str, Any] = {}

    # Reads (issue #13): reads never hang on the site's database.
    read_timeout: float = Field(5.0, gt=0)
    read_allow_partial: bool = False

    # Several writers (issue #19): how conflicts are decided.
    conflict_policies: dict[str, str] = {}
    conflict_write_time: dict[str, str] = {}
    # Services and workers (issue #21).
    service_drains: bool | None = None
    log_handler: Literal["auto", "library", "host"] = "auto"
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    wait_poll_interval: float = Field(0.2, gt=0)
    idempotency_ttl: float = Field(7 * 86400.0, gt=0)

    @model_validator(mode="after")
    def _keys_outlive_statuses(self) -> BufferingSettings:
        if self.idempotency_ttl < self.status_ttl:
            raise ValueError(
                f"idempotency_ttl ({self.idempotency_ttl:g} s) is shorter than status_ttl "
                f"({self.status_ttl:g} s): a retry could buffer a second transaction; "
                "raise idempotency_ttl"
            )
        return self

    @property
    def drains_in_service(self) -> bool:
        """Whether a service's lifespan drains (``service_drains``, resolved)."""
        if self.service_drains is not None:
            return self.service_drains
        return self.backend_url.lower().startswith("memory:")

    # The ledger's life (issue #22): pruning past a safe horizon.
    ledger_retention: float = Field(7 * 24 * 3600.0, ge=60)
    ledger_prune_interval: float = Field(3600.0, ge=0)
    ledger_prune_batch: int = Field(5000, ge=1)

    # The web console (issue #22): read-only unless a credential is set.
    console_credential: SecretStr | None = None

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

    def require_url(self, name: Literal["database_url", "replica_url"]) -> str:
        """A database URL that is about to be opened: set, and its driver installed.

        Args:
            name: ``database_url`` or ``replica_url``.

        Returns:
            The URL.

        Raises:
            ConfigurationError: The setting is not set, or the URL's driver is
                not installed (the message names the variable, the option or
                the extra to install).
        """
        url: str | None = getattr(self, name)
        if url is None:
            option = name.removesuffix("_url").replace("_", "-")
            raise ConfigurationError(
                f"no {name}: set CCAT_BUFFERING_{name.upper()} (or --{option}-url, "
                f"or {name} in {DEFAULT_CONFIG_FILE}), e.g. postgresql+asyncpg://ops@host/ops"
            )
        check_driver(name, url)
        return url

    def masked(self) -> dict[str, object]:
        """The settings with every password hidden (URLs, engine options), for display."""
        return {name: mask_mapping(value) for name, value in self.model_dump().items()}

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """What ``repr()`` and ``str()`` show: the fields, passwords hidden."""
        for name, value in super().__repr_args__():
            yield name, mask_mapping(value)


def load_settings(*, config_file: str | None = None, **overrides: object) -> BufferingSettings:
    """Read the settings, turning every error into one short :class:`ConfigurationError`.

    Args:
        config_file: A TOML file to read instead of the one named by
            ``CCAT_BUFFERING_CONFIG_FILE`` (``--config``).
        **overrides: Values that beat every source (command-line options);
            ``None`` values are left out.

    Returns:
        The settings.

    Raises:
        ConfigurationError: A value is missing or invalid, or the TOML file
            named by ``CCAT_BUFFERING_CONFIG_FILE`` is missing or not valid
            TOML; the message names the setting, its masked value and the fix.
    """
    values = {name: value for name, value in overrides.items() if value is not None}
    named = config_file or os.environ.get(CONFIG_FILE_VARIABLE)
    if named is not None and not os.path.isfile(named):
        raise ConfigurationError(
            f"{CONFIG_FILE_VARIABLE} (or --config) names {named!r}, which is not a file: "
            "correct the path, or unset it to read ccat-buffering.toml of the working directory"
        )
    before = os.environ.get(CONFIG_FILE_VARIABLE)
    if config_file is not None:
        os.environ[CONFIG_FILE_VARIABLE] = config_file
    try:
        return BufferingSettings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigurationError(explain(exc, values)) from exc
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        path = named or DEFAULT_CONFIG_FILE
        raise ConfigurationError(f"{path} is not valid TOML: {exc}; fix the file") from exc
    finally:
        if config_file is not None:
            if before is None:
                del os.environ[CONFIG_FILE_VARIABLE]
            else:
                os.environ[CONFIG_FILE_VARIABLE] = before
