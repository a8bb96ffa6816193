"""Prometheus metrics of a site (the ``metrics`` extra: prometheus-client).

Counters follow every change of state the transaction manager makes in this
process; gauges are refreshed from the stores once a second; two histograms
time what users feel: buffered to committed, and buffered to visible on the
replica. ``ccat-buffering worker --metrics-port N`` serves them over HTTP.
Only the worker holding the site's lease drains and confirms, so each commit,
replication and dead letter is counted once, by that worker. A service's own
counts (submits, refusals, reads, waits) are served by
:func:`ccat_buffering.web.service_metrics.metrics_router`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ccat_buffering.conflicts.kinds import Conflict
from ccat_buffering.drain import operator_pause
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.write.models import TransactionState, TransactionStatus

__all__ = ["SiteMetrics", "serve"]

_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400)


class SiteMetrics:
    """The metrics of one site, in their own registry.

    Args:
        site: The coordinator whose manager to listen to and whose stores to read.
        registry: Where to register; a new one by default.
    """

    def __init__(
        self, site: BufferingCoordinator, registry: CollectorRegistry | None = None
    ) -> None:
        self.site = site
        self.registry = registry or CollectorRegistry()
        labels = ["site"]
        self._name = site.backend.site

        def counter(name: str, text: str) -> Counter:
            return Counter(f"ccat_buffering_{name}", text, labels, registry=self.registry)

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(f"ccat_buffering_{name}", text, labels, registry=self.registry)

        self.counts = {
            TransactionState.BUFFERED: counter("buffered", "Transactions buffered."),
            TransactionState.COMMITTED: counter("committed", "Transactions committed."),
            TransactionState.REPLICATED: counter("replicated", "Transactions seen on the replica."),
            TransactionState.FAILED: counter("dead_lettered", "Transactions dead-lettered."),
        }
        self.depth = gauge("queue_depth", "Transactions waiting in the buffer.")
        self.in_flight = gauge("in_flight", "Transactions claimed and not yet settled.")
        self.dead_letters = gauge("dead_letters", "Transactions in the dead-letter queue.")
        self.lag_bytes = gauge("replication_lag_bytes", "WAL the replica has still to replay.")
        self.pending = gauge("replication_pending", "Committed transactions not yet replicated.")
        self.operator_paused = gauge(
            "operator_paused", "1 while an operator's pause of the drain is in force."
        )
        self.to_commit = Histogram(
            "ccat_buffering_time_to_commit_seconds",
            "Seconds from buffered to committed on the main database.",
            labels,
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.conflicts = Counter(
            "ccat_buffering_conflicts",
            "Conflicts the site's writes met, by model, kind and outcome.",
            ["site", "model", "kind", "outcome"],
            registry=self.registry,
        )
        self.to_visible = Histogram(
            "ccat_buffering_time_to_visible_seconds",
            "Seconds from buffered to visible on the site's replica.",
            labels,
            buckets=_BUCKETS,
            registry=self.registry,
        )
        # Every series exists from the start, at 0: an alert such as
        # ``rate(ccat_buffering_committed_total[5m]) == 0`` has something to
        # evaluate before the first commit.
        for metric in (*self.counts.values(), self.to_commit, self.to_visible):
            metric.labels(self._name)
        for metric in (self.depth, self.in_flight, self.dead_letters, self.lag_bytes, self.pending):
            metric.labels(self._name).set(0)
        site.manager.listeners.append(self)

    def changed(self, statuses: Sequence[TransactionStatus]) -> None:
        """Count and time each status the manager stored."""
        for status in statuses:
            counter = self.counts.get(status.state)
            if counter is not None:
                counter.labels(self._name).inc()
            if status.state is TransactionState.COMMITTED and status.committed_at:
                seconds = (status.committed_at - status.created_at).total_seconds()
                self.to_commit.labels(self._name).observe(max(seconds, 0.0))
            if status.state is TransactionState.REPLICATED and status.replicated_at:
                seconds = (status.replicated_at - status.created_at).total_seconds()
                self.to_visible.labels(self._name).observe(max(seconds, 0.0))

    def conflicts_found(self, conflicts: Sequence[Conflict]) -> None:
        """Count each conflict (``conflicts_total{site,model,kind,outcome}``)."""
        for conflict in conflicts:
            self.conflicts.labels(
                self._name, conflict.model, str(conflict.kind), str(conflict.outcome)
            ).inc()

    async def refresh(self) -> None:
        """Read the gauges from the stores and the tracker."""
        stats = await self.site.backend.buffer.stats()
        self.depth.labels(self._name).set(stats.depth)
        self.in_flight.labels(self._name).set(stats.in_flight)
        self.dead_letters.labels(self._name).set(stats.dead_letters)
        held = await operator_pause.current(self.site.backend)
        self.operator_paused.labels(self._name).set(0 if held is None else 1)
        # The whole site's pending count, from the stores: a standby worker
        # (which does not confirm) shows it too.
        counts = await self.site.backend.status.counts()
        self.pending.labels(self._name).set(counts[TransactionState.COMMITTED])
        report = self.site.tracker.last_report
        if report is not None and self.site.tracker.confirming:
            self.lag_bytes.labels(self._name).set(report.lag_bytes or 0)

    async def refresh_forever(self, interval: float = 1.0) -> None:
        """Refresh the gauges every ``interval`` seconds."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval)


def serve(site: BufferingCoordinator, port: int, host: str = "127.0.0.1") -> SiteMetrics:
    """Serve a site's metrics over HTTP and keep the gauges fresh.

    Args:
        site: The coordinator.
        port: The port to listen on.
        host: The address to listen on (loopback by default).

    Returns:
        The metrics.
    """
    metrics = SiteMetrics(site)
    start_http_server(port, addr=host, registry=metrics.registry)
    task = asyncio.get_running_loop().create_task(metrics.refresh_forever())
    site.background.add(task)
    return metrics
