"""Batch sizes chosen by the link: the bandwidth-delay product of the drain.

A batch costs its round trips (fixed, ``round_trips x RTT``) plus a share per
transaction (server work, encoding, and bytes on the wire). On loopback the
round trips are free and small batches drain as fast as big ones; over 500 ms
they dominate unless a batch holds enough work to hide them. The sizer keeps
the round trips near ``share`` of a batch's time: with the per-transaction
cost ``c`` observed, a batch of ``n = k x RTT x (1 - share) / (share x c)``
spends about ``share`` of its time waiting, between the configured bounds,
and never more payload bytes or seconds than allowed.

A batch never shrinks below its starting size because round trips are slow.
A batch's fixed costs (its round trips, the claim, the settling) only spread
thinner as it grows, and what a transaction costs does not fall as the batch
shrinks, so a smaller batch is never faster. On a driver that pays round
trips per statement (asyncpg, the session path) those round trips show up as
per-transaction cost, and the formula above would shrink the batch to the
minimum and starve the drain (18.6 tx/s against 181 at 40 ms, issue #23):
below ``start`` only the payload bytes may bring a batch, and ``max_seconds``
only stops its growth. Those round trips are a batch's fixed cost all the
same (asyncpg's session path pays about 12 per batch of the example schema,
whatever its size): the sizer fits ``fixed + n x c`` through recent batches
of different sizes, trying one batch twice as big when it has seen only one
size, so that it grows such a batch as it grows the pipeline's.
"""

from __future__ import annotations

import collections
import math

__all__ = ["BatchSizer"]

SAMPLES = 8
"""Recent batches (size, seconds) the fixed cost is fitted over."""
PROBE_AFTER = 3
"""Batches at one size before one batch twice as big is tried."""


class BatchSizer:
    """Chooses the next batch's size from what the last batches cost.

    Args:
        start: The first batch's size.
        minimum: The smallest batch (only ``max_bytes`` brings one below ``start``).
        maximum: The largest batch.
        max_bytes: The most payload bytes in one batch.
        max_seconds: The longest a batch should take (well inside the
            statement timeout and the claim lease).
        round_trips: Round trips a batch costs on its common path.
        share: The share of a batch's time the round trips may take.
        floor_seconds: Batches aim to take at least this long even on
            loopback, where fixed per-batch costs other than the link dominate.
    """

    def __init__(
        self,
        *,
        start: int,
        minimum: int,
        maximum: int,
        max_bytes: int,
        max_seconds: float,
        round_trips: int = 2,
        share: float = 0.25,
        floor_seconds: float = 0.2,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"batch bounds must satisfy 1 <= min <= max, not {minimum}, {maximum}")
        self.minimum = minimum
        self.maximum = maximum
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.round_trips = round_trips
        self.share = share
        self.floor_seconds = floor_seconds
        self.size = min(max(start, minimum), maximum)
        self.start = self.size
        self._samples: collections.deque[tuple[int, float]] = collections.deque(maxlen=SAMPLES)
        self._steady = 0
        self.rtt: float | None = None
        self.per_transaction: float | None = None
        self.bytes_per_transaction: float | None = None

    def observe_rtt(self, seconds: float) -> None:
        """Take a round-trip time measured on a warm connection (the lowest sample wins).

        Args:
            seconds: One measured round trip.
        """
        if self.rtt is None or seconds < self.rtt:
            self.rtt = seconds
        else:  # drift up slowly when the link gets slower
            self.rtt += 0.1 * (seconds - self.rtt)

    def observe(self, count: int, seconds: float, payload_bytes: int) -> int:
        """Learn from one batch and return the next batch's size.

        Args:
            count: Transactions in the batch.
            seconds: What the whole cycle took (claim, apply, settle).
            payload_bytes: The batch's payload bytes.

        Returns:
            The next size.
        """
        if count <= 0:
            return self.size
        self._samples.append((count, seconds))
        fixed = self._fixed_seconds()
        cost = max((seconds - fixed) / count, 1e-6)
        per_byte = payload_bytes / count
        self.per_transaction = _ewma(self.per_transaction, cost)
        self.bytes_per_transaction = _ewma(self.bytes_per_transaction, per_byte)
        target = max(self.floor_seconds, fixed / self.share)
        # Time only ever grows a batch past its start (see the module's docstring).
        wanted = max((target - fixed) / self.per_transaction, float(self.start))
        limits = [
            float(self.maximum),
            # the time a batch may take caps its growth, never shrinks it below the start
            max(max(self.max_seconds - fixed, 0.0) / self.per_transaction, float(self.start)),
            # grow by at most four times a batch, so one odd sample cannot overshoot
            4.0 * max(count, self.size),
        ]
        by_time = min([wanted, *limits])
        by_bytes = self.max_bytes / max(self.bytes_per_transaction, 1.0)
        size = max(self.minimum, min(math.floor(min(by_time, by_bytes)), self.maximum))
        self._steady = self._steady + 1 if size == count else 0
        if self._steady >= PROBE_AFTER and len({n for n, _ in self._samples}) < 2:
            # Always one size: nothing tells the batch's fixed cost from its
            # transactions' (round trips per statement look like per-transaction
            # cost). One batch twice as big, within the limits, tells them apart.
            size = max(size, min(2 * size, math.floor(min([*limits[:2], by_bytes]))))
            self._steady = 0
        self.size = size
        return self.size

    def _fixed_seconds(self) -> float:
        """What a batch costs whatever its size: fitted over recent sizes, else its round trips.

        A batch takes ``fixed + n x cost``; with batches of different sizes,
        a least-squares line through (size, seconds) gives ``fixed``, which
        on a driver paying a round trip per statement is many round trips,
        not the ``round_trips`` of the one-message path.
        """
        link = self.round_trips * (self.rtt or 0.0)
        samples = self._samples
        sizes = [n for n, _ in samples]
        if len(set(sizes)) < 2 or max(sizes) < 1.5 * min(sizes):
            return link
        mean_n = sum(sizes) / len(samples)
        mean_t = sum(t for _, t in samples) / len(samples)
        spread = sum((n - mean_n) ** 2 for n in sizes)
        slope = sum((n - mean_n) * (t - mean_t) for n, t in samples) / spread
        fitted = mean_t - max(slope, 0.0) * mean_n
        # Never below the link's own round trips, never above the quickest batch.
        return max(link, min(fitted, min(t for _, t in samples)))


def _ewma(previous: float | None, sample: float, weight: float = 0.3) -> float:
    return sample if previous is None else previous + weight * (sample - previous)
