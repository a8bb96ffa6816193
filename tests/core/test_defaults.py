"""Each default lives where the part that uses it is built; the settings must agree.

``BufferingSettings`` restates the defaults of the constructors that
``from_settings()`` calls, so that ``ccat-buffering config`` can show them.
This test holds the two together: a default changed in one place and not
the other fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.retry import RetryPolicy
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.confirm.replication import ReplicationTracker
from ccat_buffering.drain._link import LinkTimeouts
from ccat_buffering.drain.processor import BackgroundProcessor
from ccat_buffering.read.reads import Reads

LINK = {f.name: f.default for f in dataclasses.fields(LinkTimeouts)}
RETRY = {f.name: f.default for f in dataclasses.fields(RetryPolicy)}


def _parameter(callable_: Any, name: str) -> Any:
    default = inspect.signature(callable_).parameters[name].default
    assert default is not inspect.Parameter.empty, f"{callable_.__qualname__}({name}) has none"
    return default


SOURCES: dict[str, Any] = {
    "batch_size": lambda: _parameter(BackgroundProcessor, "batch_size"),
    "claim_lease": lambda: _parameter(BackgroundProcessor, "claim_lease"),
    "processor_lease": lambda: _parameter(BackgroundProcessor, "lease_ttl"),
    "poll_interval": lambda: _parameter(BackgroundProcessor, "poll_interval"),
    "outage_base_delay": lambda: _parameter(BackgroundProcessor, "outage_base_delay"),
    "outage_max_delay": lambda: _parameter(BackgroundProcessor, "outage_max_delay"),
    "outage_probe_interval": lambda: _parameter(BackgroundProcessor, "probe_interval"),
    "status_ttl": lambda: _parameter(TransactionManager, "status_ttl"),
    "cache_ttl": lambda: _parameter(TransactionManager, "cache_ttl"),
    "max_payload_bytes": lambda: _parameter(TransactionManager, "max_payload_bytes"),
    "replication_poll_interval": lambda: _parameter(ReplicationTracker, "poll_interval"),
    "replication_timeout": lambda: _parameter(ReplicationTracker, "timeout"),
    "read_timeout": lambda: _parameter(Reads, "timeout"),
    "read_allow_partial": lambda: _parameter(Reads, "allow_partial"),
    "max_attempts": lambda: RETRY["max_attempts"],
    "retry_base_delay": lambda: RETRY["base_delay"],
    "retry_max_delay": lambda: RETRY["max_delay"],
    "connect_timeout": lambda: LINK["connect"],
    "statement_timeout": lambda: LINK["statement"],
    "lock_timeout": lambda: LINK["lock"],
    "idle_in_transaction_timeout": lambda: LINK["idle_in_transaction"],
    "tcp_keepalive_idle": lambda: LINK["keepalive_idle"],
    "tcp_keepalive_interval": lambda: LINK["keepalive_interval"],
    "tcp_keepalive_count": lambda: LINK["keepalive_count"],
}


@pytest.mark.parametrize("setting", sorted(SOURCES))
def test_a_setting_defaults_to_what_its_constructor_defaults_to(setting: str) -> None:
    assert BufferingSettings.model_fields[setting].default == SOURCES[setting](), setting


def test_a_hand_built_processor_differs_from_the_settings_only_where_documented() -> None:
    # By hand, every batch is batch_size and nothing is claimed ahead;
    # from_settings() turns on the adaptive sizer and the prefetch.
    assert _parameter(BackgroundProcessor, "prefetch") is False
    assert _parameter(BackgroundProcessor, "sizer") is None
    fields = BufferingSettings.model_fields
    assert fields["batch_prefetch"].default is True
    assert fields["batch_size_adaptive"].default is True
