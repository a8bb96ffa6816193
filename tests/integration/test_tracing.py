"""Traces across the buffer: submit, a real outage of the link, drain, commit, replication.

The OpenTelemetry SDK's in-memory exporter collects the spans; the main
database is PostgreSQL behind a relay that is down, then up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from pg import fresh_database
from sqlalchemy.engine import make_url

from ccat_buffering import BufferingCoordinator, BufferingSettings
from ccat_buffering.demo._relay import LoopbackRelay
from ccat_buffering.demo.example import Base
from ccat_buffering.drain.database import create_engine
from ccat_buffering.drain.processor import ProcessorState
from ccat_buffering.drain.tracing import Tracing
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry

from support import make_schema, observation

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402


@pytest.fixture
def exported() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _named(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def test_one_trace_from_submit_to_replica_across_an_outage(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = exported
    async with fresh_database() as url:
        direct = create_engine(url)
        await make_schema(direct)
        await direct.dispose()
        target = make_url(url)
        link = LoopbackRelay(target.host or "127.0.0.1", target.port or 5432)  # down
        settings = BufferingSettings(
            site_name="cerro",
            database_url=target.set(port=link.port).render_as_string(False),
            poll_interval=0.01,
            replication_poll_interval=0.01,
            wait_poll_interval=0.01,
            outage_base_delay=0.05,
            outage_max_delay=0.1,
            outage_probe_interval=0.05,
            connect_timeout=1,
        )
        registry = ModelRegistry.from_base(Base)
        try:
            async with BufferingCoordinator.from_settings(
                settings, registry=registry, start=False
            ) as site:
                tracing = Tracing("cerro", provider)
                site.processor.tracing = site.tracing = tracing
                site.manager.listeners.append(tracing)
                tracer = provider.get_tracer("a-service")
                with tracer.start_as_current_span("POST /observations") as request:
                    tx, _ = observation(1)
                    status = await site.submit(tx)
                stored = await site.backend.buffer.stats()
                assert stored.depth == 1
                site.start()  # the link is down: the drain pauses
                deadline = asyncio.get_running_loop().time() + 20
                while site.processor.state is not ProcessorState.PAUSED:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.01)
                await link.start()
                await site.prepare_database()
                done = await site.wait(status.transaction_id, until="replicated", timeout=30)
                assert done.state is TransactionState.REPLICATED
        finally:
            await link.stop()
    spans = exporter.get_finished_spans()
    (send,) = _named(spans, "send cerro")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "ccat_buffering"
    assert send.attributes["messaging.destination.name"] == "cerro"
    assert send.attributes["messaging.message.id"] == status.transaction_id
    trace_id = send.context.trace_id
    processes = _named(spans, "process cerro")
    failed = [p for p in processes if p.status.status_code is StatusCode.ERROR]
    succeeded = [p for p in processes if p.status.status_code is not StatusCode.ERROR]
    assert failed, "the outage shows as a failed process span"
    assert len(succeeded) == 1
    for process in processes:  # each attempt a new trace, linked to the send
        assert process.kind is SpanKind.CONSUMER
        assert process.context.trace_id != trace_id and process.parent is None
        assert [link.context.span_id for link in process.links] == [send.context.span_id]
        assert process.attributes is not None
        assert process.attributes["messaging.batch.message_count"] == 1
        assert process.attributes["messaging.destination.name"] == "cerro"
    (committed,) = _named(spans, "committed cerro")
    (replicated,) = _named(spans, "replicated cerro")
    for settled in (committed, replicated):
        assert settled.context.trace_id == trace_id  # on the transaction's own trace
        assert settled.parent is not None and settled.parent.span_id == send.context.span_id
        assert settled.attributes is not None
        assert settled.attributes["messaging.message.id"] == status.transaction_id
        assert settled.attributes["ccat_buffering.commit_lsn"] == str(done.commit_lsn)
    assert [link.context.span_id for link in committed.links] == [succeeded[0].context.span_id]
