"""A service's own Prometheus metrics, served by a FastAPI router.

Needs the ``fastapi`` and ``metrics`` extras. A service submits, reads and
waits; the worker drains. So a service's ``/metrics`` carries what the
service did (``ccat_buffering_service_*``) and the site's gauges, never the
drain's counters, which the worker alone counts::

    from ccat_buffering.web.service_metrics import metrics_router

    app.include_router(metrics_router())

The values are read from :attr:`BufferingCoordinator.activity
<ccat_buffering.BufferingCoordinator.activity>` at each scrape.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ccat_buffering.errors import BackendError
from ccat_buffering.site.coordinator import BufferingCoordinator
from ccat_buffering.web.fastapi import Site

__all__ = ["ServiceCollector", "metrics_router"]

_SUBMIT_STATES = ("buffered", "committed")
_REFUSALS = ("invalid", "buffer_unavailable", "database_unavailable", "database_refused", "other")
_WAIT_OUTCOMES = ("committed", "replicated", "failed", "conflicted", "timeout", "unknown")


class ServiceCollector(Collector):
    """Reads a coordinator's activity and buffer gauges as Prometheus metrics.

    Args:
        site: The service's coordinator.
        depth: The buffer's depth, read by the caller before the scrape.
    """

    def __init__(self, site: BufferingCoordinator, depth: int | None = None) -> None:
        self.site = site
        self.depth = depth

    def collect(self) -> Iterator[Metric]:
        """The metrics, every label value present from the start (0 until counted)."""
        name, activity = self.site.backend.site, self.site.activity
        submits = CounterMetricFamily(
            "ccat_buffering_service_submits",
            "Transactions this service submitted, by the state submit returned.",
            labels=["site", "state"],
        )
        for state in sorted({*_SUBMIT_STATES, *activity.submits}):
            submits.add_metric([name, state], activity.submits[state])
        yield submits
        refusals = CounterMetricFamily(
            "ccat_buffering_service_refusals",
            "Submits this service refused (nothing written), by reason.",
            labels=["site", "reason"],
        )
        for reason in sorted({*_REFUSALS, *activity.refusals}):
            refusals.add_metric([name, reason], activity.refusals[reason])
        yield refusals
        replays = CounterMetricFamily(
            "ccat_buffering_service_idempotent_replays",
            "Submits answered from an idempotency key (no new transaction).",
            labels=["site"],
        )
        replays.add_metric([name], activity.replays)
        yield replays
        reads = CounterMetricFamily(
            "ccat_buffering_service_reads", "Reads this service made.", labels=["site"]
        )
        reads.add_metric([name], self.site.reads.calls)
        yield reads
        waits = CounterMetricFamily(
            "ccat_buffering_service_waits",
            "Waits for a transaction that ended, by outcome.",
            labels=["site", "outcome"],
        )
        for outcome in sorted({*_WAIT_OUTCOMES, *activity.waits}):
            waits.add_metric([name, outcome], activity.waits[outcome])
        yield waits
        waiting = GaugeMetricFamily(
            "ccat_buffering_service_waiting", "Waits in progress.", labels=["site"]
        )
        waiting.add_metric([name], activity.waiting)
        yield waiting
        if self.depth is not None:
            depth = GaugeMetricFamily(
                "ccat_buffering_queue_depth",
                "Transactions waiting in the buffer.",
                labels=["site"],
            )
            depth.add_metric([name], self.depth)
            yield depth


def metrics_router(path: str = "/metrics") -> APIRouter:
    """A router serving the service's metrics in the Prometheus text format.

    Args:
        path: Where to serve them.

    Returns:
        The router, for ``app.include_router``.
    """
    router = APIRouter(tags=["buffering"])

    @router.get(path, include_in_schema=False)
    async def metrics(site: Site) -> Response:
        registry = CollectorRegistry(auto_describe=False)
        try:
            depth: int | None = (await site.backend.buffer.stats()).depth
        except BackendError:  # the service's own counts are still worth a scrape
            depth = None
        registry.register(ServiceCollector(site, depth))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
