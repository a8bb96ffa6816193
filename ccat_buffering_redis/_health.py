"""The health of a site's Redis: eviction policy, memory, persistence.

``SupportsBufferHealth`` and the policy checks that guard buffering, as a part
of :class:`~ccat_buffering_redis.backend.RedisBackend`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from ccat_buffering.buffer.protocols import MemoryReport
from ccat_buffering.errors import BackendError, BackendUnavailableError
from ccat_buffering.write.models import TransactionState, utc_now
from ccat_buffering_redis._memory import (
    RECHECK_SECONDS,
    MemoryInfo,
    config_values,
    eviction_problem,
    memory_warnings,
    parse_memory,
)
from ccat_buffering_redis._parts import BackendPart
from ccat_buffering_redis._values import as_text

__all__ = ["RedisHealth"]

# The backend's logger: its warnings keep the name they always had.
log = logging.getLogger("ccat_buffering_redis.backend")


class RedisHealth(BackendPart):
    """The health methods of :class:`~ccat_buffering_redis.backend.RedisBackend`."""

    info_refused: str | None = None
    """Why ``INFO memory`` was refused at the last look (an ACL without it), if it was."""

    if TYPE_CHECKING:
        allow_eviction: bool
        policy_warning: str | None
        refused_full_at: float | None
        _policy_checked_at: float
        _eviction_problem: str | None

    async def check_policy(self) -> str | None:
        """Read ``maxmemory-policy``; note why buffering here could lose data.

        Called when the backend first buffers, at most every
        :data:`~ccat_buffering_redis._memory.POLICY_RECHECK_SECONDS` after, and on
        each health check.

        Returns:
            Why buffering is refused (an evicting policy not allowed), or ``None``.
        """
        self._policy_checked_at = time.monotonic()
        try:
            with self.translate():
                reply = await self.client.config_get("maxmemory-policy")
        except BackendUnavailableError:
            self._policy_checked_at = -math.inf
            raise
        except BackendError as exc:
            reply, refused = None, str(exc.__cause__ or exc)
        else:
            refused = "it gave no value"
        policies = config_values(reply)
        if not policies:
            warning = (
                f"{self.where}: the eviction policy could not be checked (CONFIG GET "
                f"maxmemory-policy: {refused}); make sure it is noeviction, or buffered "
                "transactions may be evicted"
            )
            if warning != self.policy_warning:
                log.warning("%s", warning, extra={"site": self.site})
            self.policy_warning, self._eviction_problem = warning, None
            return None
        self._eviction_problem = eviction_problem(self.where, policies, self.allow_eviction)
        evicting = sorted({p for p in policies if p != "noeviction"})
        self.policy_warning = self._eviction_problem
        if evicting and self.allow_eviction:
            self.policy_warning = (
                f"{self.where} evicts keys (maxmemory-policy {', '.join(evicting)}) and "
                "allow_eviction is set: buffered transactions are lost when memory runs out"
            )
        return self._eviction_problem

    async def memory(self) -> MemoryInfo | None:
        """The server's memory (``INFO memory``), or ``None`` where INFO is refused.

        Why it was refused is kept in ``info_refused`` (health warns of it).
        """
        try:
            with self.translate():
                reply = await self.client.info("memory")
        except BackendUnavailableError:
            raise
        except BackendError as exc:
            self.info_refused = str(exc)
            return None
        self.info_refused = None
        return parse_memory(reply)

    async def memory_report(self) -> MemoryReport | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsBufferHealth.memory_report`."""
        info = await self.memory()
        if info is None:
            return None
        stats = await self.buffer.stats()
        held = stats.depth + stats.in_flight
        # The data set over what the site holds: an upper bound where other
        # data shares the server, and too rough below a hundred transactions.
        per_tx = info.dataset / held if held >= 100 else None
        rate = await self._buffering_rate()
        full_in = None
        if info.limit and per_tx and rate:
            full_in = max(info.limit - info.used, 0) / (per_tx * rate)
        return MemoryReport(
            info.used, info.limit or None, info.policy or None, per_tx, rate, full_in
        )

    async def _buffering_rate(self, sample: int = 100) -> float | None:
        """Transactions a second, from when the newest waiting ones were buffered."""
        listed = self.keys.state(TransactionState.BUFFERED)
        newest: list[Any] = []
        with self.translate():
            buckets: list[Any] = await self.client.zrange(listed, -8, -1)
            for bucket in reversed(buckets):
                newest[:0] = await self.client.zrange(f"{listed}:{as_text(bucket)}", 0, -1)
                if len(newest) >= sample:
                    break
        ids = [as_text(t) for t in newest[-sample:] if isinstance(t, bytes | str)]
        if len(ids) < 10:
            return None
        statuses = [s for s in await self.status.get_many(ids) if s is not None]
        if len(statuses) < 10:
            return None
        span = (utc_now() - min(s.created_at for s in statuses)).total_seconds()
        return len(statuses) / span if span > 0 else None

    async def buffer_warnings(self) -> list[str]:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsBufferHealth.buffer_warnings`."""
        warnings = []
        await self.check_policy()
        if self.policy_warning:
            warnings.append(self.policy_warning)
        persistence = await self.persistence_warning()
        if persistence:
            warnings.append(persistence)
        info = await self.memory()
        refusing = self.refused_full_at is not None and (
            time.monotonic() - self.refused_full_at < RECHECK_SECONDS
        )
        if not refusing:
            # Another process may be the one refused: ask Redis itself.
            refusing = "OOM" in as_text(await self.script("refuses_writes"))
        if info is not None:
            warnings += memory_warnings(self.where, info, refusing)
        else:
            if self.info_refused:
                warnings.append(
                    f"the memory of the buffer cannot be read, so nothing warns before it is "
                    f"full: {self.info_refused}"
                )
            if refusing:
                warnings.append(f"{self.where} refused writes as out of memory in the last 30 s")
        return warnings

    async def persistence_warning(self) -> str | None:
        """See :meth:`ccat_buffering.buffer.protocols.SupportsKeyAudit.persistence_warning`."""
        try:
            with self.translate():
                reply = await self.client.config_get("appendonly")
        except BackendError:
            return None  # CONFIG may be disabled (a managed Redis): nothing to say
        values = config_values(reply)
        if values and all(v == "no" for v in values):
            return (
                f"{self.where} keeps no append-only file (appendonly no): a restart loses "
                "acknowledged writes; enable AOF for a secondary site"
            )
        return None
