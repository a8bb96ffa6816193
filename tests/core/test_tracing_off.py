"""When tracing is off: no span, no context stored, and a global provider found when set."""

from __future__ import annotations

import pytest

from ccat_buffering.drain import tracing as tracing_module
from ccat_buffering.drain.tracing import Tracing
from ccat_buffering.write.models import Transaction

from support import observation

sdk = pytest.importorskip("opentelemetry.sdk.trace")


def _sent(tracing: Tracing, tx: Transaction) -> Transaction:
    with tracing.sending(tx) as carried:
        return carried


def test_with_no_provider_a_submit_carries_no_context() -> None:
    tx, _ = observation(1)
    assert _sent(Tracing("cerro"), tx).trace_context is None


def test_a_global_provider_set_later_is_found_within_the_look_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(tracing_module.time, "monotonic", lambda: clock[0])
    tracing = Tracing("cerro")
    tx, _ = observation(1)
    assert _sent(tracing, tx).trace_context is None  # looked: none set
    provider = sdk.TracerProvider()
    monkeypatch.setattr(tracing_module.trace, "get_tracer_provider", lambda: provider)
    clock[0] += tracing_module._LOOK_EVERY / 2
    assert _sent(tracing, tx).trace_context is None  # not looked again yet
    clock[0] += tracing_module._LOOK_EVERY
    carried = _sent(tracing, tx).trace_context
    assert carried is not None and "traceparent" in carried
    clock[0] = 0.0  # once set it stays set (a global provider cannot be unset)
    assert _sent(tracing, tx).trace_context is not None
    provider.shutdown()
