"""What a site's Redis does when memory runs out, and how much of it is left.

A buffer must not lose what it acknowledged, so the backend refuses to buffer
on a Redis whose ``maxmemory-policy`` evicts keys (anything but
``noeviction``), unless the user accepted that loss (``allow_eviction``). The
policy is read with ``CONFIG GET`` when the backend first buffers, again
before a write that buffers once the last read is :data:`POLICY_RECHECK_SECONDS`
old, and on each health check: a policy switched at run time (``CONFIG SET
maxmemory-policy allkeys-lru``) is refused within that bound, by every process. Where ``CONFIG``
is disabled (a managed Redis), the policy cannot be checked: that is said as a
warning, not refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "POLICY_RECHECK_SECONDS",
    "RECHECK_SECONDS",
    "MemoryInfo",
    "config_values",
    "eviction_problem",
    "memory_warnings",
    "parse_memory",
]

RECHECK_SECONDS = 30.0
"""How long a refusal as out of memory stays in the health warnings."""

POLICY_RECHECK_SECONDS = 1.0
"""How long a policy read stays trusted on the write path: one ``CONFIG GET``
a second at most, and no write acknowledged later than that after a switch."""

WARN_AT = (0.7, 0.9)
"""Fractions of ``maxmemory`` at which health warns."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def config_values(reply: Any) -> list[str]:
    """CONFIG GET's values, from one server or (a dict per node) from a cluster."""
    if not isinstance(reply, dict):
        return []
    values: list[str] = []
    for value in reply.values():
        for item in value.values() if isinstance(value, dict) else [value]:
            values.append(_text(item))
    return values


def eviction_problem(where: str, policies: list[str], allowed: bool) -> str | None:
    """Why buffering on this Redis would lose data silently, or ``None``.

    Args:
        where: The server, as error messages name it.
        policies: ``maxmemory-policy`` of each node.
        allowed: The user accepted eviction (``allow_eviction``).
    """
    evicting = sorted({p for p in policies if p != "noeviction"})
    if not evicting or allowed:
        return None
    return (
        f"{where} evicts keys when memory runs out (maxmemory-policy {', '.join(evicting)}): "
        "buffered transactions would be lost without a word. Set `maxmemory-policy "
        "noeviction` (CONFIG SET maxmemory-policy noeviction, and in redis.conf), or accept "
        "the loss explicitly with allow_eviction=true (CCAT_BUFFERING_REDIS_ALLOW_EVICTION)"
    )


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """A Redis server's memory, from ``INFO memory`` (the fullest node of a cluster).

    Attributes:
        used: ``used_memory`` in bytes.
        limit: ``maxmemory`` in bytes; 0 when unlimited.
        policy: ``maxmemory_policy``.
    """

    used: int
    limit: int
    policy: str
    dataset: int = 0

    @property
    def fraction(self) -> float | None:
        """Used memory as a fraction of the limit, or ``None`` when unlimited."""
        return self.used / self.limit if self.limit else None


def parse_memory(reply: Any) -> MemoryInfo | None:
    """The fullest node's memory from an ``INFO memory`` reply (a dict, or a dict per node)."""
    if not isinstance(reply, dict):
        return None
    nodes = list(reply.values()) if all(isinstance(v, dict) for v in reply.values()) else [reply]
    infos = []
    for node in nodes:
        try:
            infos.append(
                MemoryInfo(
                    int(node["used_memory"]),
                    int(node.get("maxmemory", 0)),
                    _text(node.get("maxmemory_policy", "")),
                    int(node.get("used_memory_dataset") or node["used_memory"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    if not infos:
        return None
    return max(infos, key=lambda i: (i.fraction or 0.0, i.used))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def memory_warnings(where: str, info: MemoryInfo, refusing: bool) -> list[str]:
    """What an operator must know of the server's memory.

    Args:
        where: The server.
        info: Its memory.
        refusing: Writes were refused as out of memory since the last look.
    """
    warnings = []
    fraction = info.fraction
    if refusing or (fraction is not None and fraction >= 1.0):
        warnings.append(
            f"{where} is full ({_size(info.used)} of {_size(info.limit)}): it refuses new "
            "transactions (BackendFullError) until the drain frees memory; raise maxmemory "
            "or restore the link to the main database (see docs/redis.rst)"
        )
    elif fraction is not None and fraction >= WARN_AT[1]:
        warnings.append(
            f"{where} is {fraction:.0%} full ({_size(info.used)} of {_size(info.limit)}): "
            "new transactions will be refused soon"
        )
    elif fraction is not None and fraction >= WARN_AT[0]:
        warnings.append(
            f"{where} is {fraction:.0%} full ({_size(info.used)} of {_size(info.limit)})"
        )
    return warnings
