"""The console's charts: samples of a site over the last hours, in a bounded ring.

A sample is taken at most every ``interval`` seconds (when a page asks, or by
the console's own loop), and the ring keeps ``hours`` of them: charts cost a
read of the ring, never a scan of the buffer. With a backend that keeps chart
samples (:class:`~ccat_buffering.protocols.SupportsChartSamples`: a capped
Redis list) each sample is also written there, capped to the ring's size,
and :meth:`Samples.load` reads them back: the charts survive a restart of the
console, and consoles sharing the site take turns rather than doubling the
samples (a sample is due when the site's newest stored one is old enough).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ccat_buffering.errors import BackendError
from ccat_buffering.health import Health
from ccat_buffering.protocols import SupportsChartSamples

__all__ = ["Sample", "Samples", "sparkline"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """The site at one moment."""

    at: float
    depth: int
    in_flight: int
    dead_letters: int
    processed: int
    memory_bytes: int | None


class Samples:
    """A bounded ring of samples.

    Args:
        store: Where the samples are kept too (a backend; one without the
            capability keeps them in this process only).
        hours: How far back the charts go.
        interval: Seconds between samples at most.
        clock: Reads the time.
    """

    def __init__(
        self,
        store: object = None,
        hours: float = 6.0,
        interval: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store if isinstance(store, SupportsChartSamples) else None
        self.loaded = False
        self.interval = interval
        self.clock = clock
        self.ring: collections.deque[Sample] = collections.deque(
            maxlen=max(int(hours * 3600 / interval), 2)
        )

    async def load(self) -> None:
        """Read the samples the store keeps into the ring (oldest first)."""
        self.loaded = True
        if self.store is None:
            return
        kept = []
        for text in await self.store.chart_samples(self.ring.maxlen):
            try:
                kept.append(Sample(**json.loads(text)))
            except (ValueError, TypeError):
                continue  # written by hand or by another version: skipped
        self.ring.clear()
        self.ring.extend(sorted(kept, key=lambda s: s.at))

    def due(self) -> bool:
        """Whether a new sample may be taken."""
        return not self.ring or self.clock() - self.ring[-1].at >= self.interval

    async def _stored_due(self) -> bool:
        if self.store is None:
            return True
        newest = await self.store.chart_samples(1)
        try:
            return not newest or self.clock() - float(json.loads(newest[0])["at"]) >= self.interval
        except (ValueError, TypeError, KeyError):
            return True

    async def add(self, health: Health) -> None:
        """Record ``health`` as a sample now (if one is due), in the ring and the store."""
        if not self.loaded:
            await self.load()
        if not self.due() or not await self._stored_due():
            return
        memory = health.buffer.memory
        sample = Sample(
            at=self.clock(),
            depth=health.buffer.depth,
            in_flight=health.buffer.in_flight,
            dead_letters=health.buffer.dead_letters,
            processed=health.processor.processed,
            memory_bytes=None if memory is None else memory.used_bytes,
        )
        self.ring.append(sample)
        if self.store is not None:
            keep = self.ring.maxlen or 2
            try:
                await self.store.append_sample(json.dumps(dataclasses.asdict(sample)), keep)
            except BackendError as exc:  # e.g. the read-only ACL user: the ring still has it
                log.debug("chart sample not kept in the backend: %s", exc)

    def drain_rate(self) -> float | None:
        """Transactions per second committed over the last minute of samples."""
        recent = [s for s in self.ring if s.at >= self.clock() - 60.0]
        if len(recent) < 2 or recent[-1].at <= recent[0].at:
            return None
        done = recent[-1].processed - recent[0].processed
        return max(done, 0) / (recent[-1].at - recent[0].at)

    def memory_growth(self) -> float | None:
        """Bytes per second the buffer's memory grew over the samples kept (``None``: unknown)."""
        known = [s for s in self.ring if s.memory_bytes is not None]
        if len(known) < 2 or known[-1].at <= known[0].at:
            return None
        first, last = known[0].memory_bytes or 0, known[-1].memory_bytes or 0
        return (last - first) / (known[-1].at - known[0].at)

    def series(self, name: str) -> list[float]:
        """One field of every sample, oldest first."""
        return [float(getattr(s, name) or 0) for s in self.ring]


def sparkline(values: Sequence[float], width: int = 240, height: int = 40) -> str:
    """SVG polyline points for ``values`` scaled into ``width`` x ``height``."""
    if not values:
        return ""
    top = max(max(values), 1.0)
    step = width / max(len(values) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{height - (v / top) * (height - 2) - 1:.1f}" for i, v in enumerate(values)
    )
