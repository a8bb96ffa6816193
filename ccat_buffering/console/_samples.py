"""The console's charts: samples of a site over the last hours, in a bounded ring.

A sample is taken at most every ``interval`` seconds (when a page asks, or by
the console's own loop), and the ring keeps ``hours`` of them: charts cost a
read of the ring, never a scan of the buffer.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ccat_buffering.health import Health

__all__ = ["Sample", "Samples", "sparkline"]


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
        hours: How far back the charts go.
        interval: Seconds between samples at most.
        clock: Reads the time.
    """

    def __init__(
        self, hours: float = 6.0, interval: float = 10.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.ring: collections.deque[Sample] = collections.deque(
            maxlen=max(int(hours * 3600 / interval), 2)
        )

    def due(self) -> bool:
        """Whether a new sample may be taken."""
        return not self.ring or self.clock() - self.ring[-1].at >= self.interval

    def add(self, health: Health) -> None:
        """Record ``health`` as a sample now (if one is due)."""
        if not self.due():
            return
        memory = health.buffer.memory
        self.ring.append(
            Sample(
                at=self.clock(),
                depth=health.buffer.depth,
                in_flight=health.buffer.in_flight,
                dead_letters=health.buffer.dead_letters,
                processed=health.processor.processed,
                memory_bytes=None if memory is None else memory.used_bytes,
            )
        )

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
