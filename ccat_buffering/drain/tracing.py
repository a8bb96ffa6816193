"""Traces across the buffer, with OpenTelemetry (the ``otel`` extra).

One trace shows a write from the request to the replica:

* ``send <site>`` (``PRODUCER``): :meth:`~ccat_buffering.BufferingCoordinator.submit`,
  a child of the caller's span. The caller's trace context (W3C
  ``traceparent``/``tracestate``) travels inside the transaction
  (``Transaction.trace_context``), through the buffer and any outage.
* ``process <site>`` (``CONSUMER``): each batch the drain applies, in a new
  trace of its own, linked to the ``send`` span of every transaction in it
  (a batch has many parents; a retry hours after the send is a new trace
  too). An outage ends it with an error status.
* ``committed <site>`` and ``replicated <site>``: recorded on each
  transaction's own trace, as children of its ``send`` span, with the commit
  LSN (``ccat_buffering.commit_lsn``); ``committed`` links to the batch's
  ``process`` span.

Attributes follow the messaging semantic conventions: ``messaging.system``
(``ccat_buffering``), ``messaging.destination.name`` (the site),
``messaging.operation.type`` (``send``/``process``), ``messaging.message.id``
(the transaction id) and ``messaging.batch.message_count``.

Without the extra, or with no tracer provider configured and no current
span, every hook returns at once: submit costs what it did (see
``bench/tracing_bench.py``). ``replicated`` is recorded by the process that
committed the transaction (the lease holder, which also confirms it); after
a restart the confirmations of earlier commits are not traced.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.status import TransactionState, TransactionStatus

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, ProxyTracerProvider, SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the extra is not installed
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["INSTRUMENTATION", "SYSTEM", "Tracing"]

INSTRUMENTATION = "ccat_buffering"
"""The instrumentation scope's name."""

SYSTEM = "ccat_buffering"
"""``messaging.system``."""

_LOOK_EVERY = 1.0
"""Seconds between looks for a global tracer provider while none is set."""

_REMEMBERED = 100_000
"""Trace contexts kept between commit and replication, at most (oldest dropped)."""


class Tracing:
    """A site's spans, on the global tracer provider or one given.

    Args:
        site: The site's name (``messaging.destination.name``).
        provider: A tracer provider; the global one by default.
    """

    def __init__(self, site: str, provider: TracerProvider | None = None) -> None:
        self.site = site
        self.provider = provider
        self._contexts: collections.OrderedDict[str, dict[str, str]] = collections.OrderedDict()
        self._global_set = False
        self._next_look = 0.0

    # -- when to trace ------------------------------------------------------

    def _recording(self) -> bool:
        """Whether spans go anywhere: a provider given, or the global one set.

        The global provider is looked up at most once per ``_LOOK_EVERY`` s
        while none is set (the lookup reads the environment: a fifth of the
        cost tracing may add to a submit), and never again once one is: it
        cannot be unset. A provider set while the site runs is used within
        that time; a submit under a caller's span is traced at once anyway.
        """
        if trace is None:
            return False
        if self.provider is not None or self._global_set:
            return True
        now = time.monotonic()
        if now < self._next_look:
            return False
        self._next_look = now + _LOOK_EVERY
        self._global_set = not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
        return self._global_set

    def _tracer(self) -> Tracer:
        provider = self.provider or trace.get_tracer_provider()
        return provider.get_tracer(INSTRUMENTATION)

    def _attributes(self, operation: str, **more: Any) -> dict[str, Any]:
        return {
            "messaging.system": SYSTEM,
            "messaging.destination.name": self.site,
            "messaging.operation.type": operation,
            "messaging.operation.name": operation,
            **{k.replace("__", "."): v for k, v in more.items() if v is not None},
        }

    # -- the producer ---------------------------------------------------------

    @contextlib.contextmanager
    def sending(self, transaction: Transaction) -> Iterator[Transaction]:
        """The ``send`` span around a submit; yields the transaction carrying its context.

        Args:
            transaction: What is submitted.
        """
        if trace is None or not (
            self._recording() or trace.get_current_span().get_span_context().is_valid
        ):
            yield transaction
            return
        attributes = self._attributes("send", messaging__message__id=transaction.transaction_id)
        with self._tracer().start_as_current_span(
            f"send {self.site}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            yield (
                transaction.model_copy(update={"trace_context": carrier})
                if carrier
                else transaction
            )

    # -- the drain --------------------------------------------------------------

    @contextlib.contextmanager
    def processing(self, transactions: Sequence[Transaction]) -> Iterator[Span | None]:
        """The ``process`` span of one batch: a new trace, linked to each transaction's send.

        Args:
            transactions: The batch.
        """
        if not self._recording():
            yield None
            return
        links = [
            Link(context, {"messaging.message.id": tx.transaction_id})
            for tx in transactions
            if (context := _span_context(tx.trace_context)) is not None
        ]
        attributes = self._attributes(
            "process",
            messaging__batch__message_count=len(transactions),
            messaging__message__id=transactions[0].transaction_id
            if len(transactions) == 1
            else None,
        )
        with self._tracer().start_as_current_span(
            f"process {self.site}",
            context=otel_context.Context(),  # a new trace: a batch has many parents
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        ) as span:
            yield span

    def committed(
        self,
        transactions: Sequence[Transaction],
        commit_lsn: LSN | None,
        batch: Span | None = None,
    ) -> None:
        """Record ``committed`` on each transaction's trace (and remember it for ``replicated``).

        Args:
            transactions: What the database now holds.
            commit_lsn: The commit's LSN (``None`` on SQLite).
            batch: The ``process`` span that committed them, linked from each.
        """
        if not self._recording():
            return
        tracer = self._tracer()
        links = [] if batch is None else [Link(batch.get_span_context())]
        for tx in transactions:
            if not tx.trace_context:
                continue
            parent = TraceContextTextMapPropagator().extract(tx.trace_context)
            tracer.start_span(
                f"committed {self.site}",
                context=parent,
                links=links,
                attributes=self._attributes(
                    "settle",
                    messaging__message__id=tx.transaction_id,
                    ccat_buffering__commit_lsn=None if commit_lsn is None else str(commit_lsn),
                ),
            ).end()
            self._contexts[tx.transaction_id] = tx.trace_context
            if len(self._contexts) > _REMEMBERED:
                self._contexts.popitem(last=False)

    def changed(self, statuses: Sequence[TransactionStatus]) -> None:
        """A listener of the manager: record ``replicated`` on each transaction's trace."""
        if not self._contexts:
            return
        for status in statuses:
            if status.state is not TransactionState.REPLICATED:
                continue
            carrier = self._contexts.pop(status.transaction_id, None)
            if carrier is None or not self._recording():
                continue
            lsn = status.commit_lsn
            self._tracer().start_span(
                f"replicated {self.site}",
                context=TraceContextTextMapPropagator().extract(carrier),
                attributes=self._attributes(
                    "settle",
                    messaging__message__id=status.transaction_id,
                    ccat_buffering__commit_lsn=None if lsn is None else str(lsn),
                ),
            ).end()


def _span_context(carrier: dict[str, str] | None) -> Any:
    if not carrier:
        return None
    found = trace.get_current_span(TraceContextTextMapPropagator().extract(carrier))
    context = found.get_span_context()
    return context if context.is_valid else None
