"""Find a Sentinel service's master by asking every sentinel and believing the newest answer.

redis-py's :class:`~redis.asyncio.sentinel.Sentinel` follows the first
sentinel that answers. Just after a failover that may be one that has not
heard of it yet (paused, partitioned, restarted from an old config), and it
still names the old master; a killed master restarted from its AOF, or one
that a forced failover replaced, says ``role:master`` for about 8 s before
Sentinel demotes it, so writes go there and are lost when it is demoted
(with ``min_replicas=0``, acknowledged first).

:class:`NewestMasterSentinel` asks all the sentinels at once, within
:data:`DISCOVERY_TIMEOUT`, and follows the answer with the highest
``config-epoch`` (each failover raises it, and only the one sentinel that
won that epoch's election chose its master). Answers at lower epochs are
not followed, even when the newest ones are unusable: an outage until the
sentinels agree is better than writes to a master already replaced.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel

__all__ = ["DISCOVERY_TIMEOUT", "NewestMasterSentinel", "SentinelAnswer", "ranked_masters"]

DISCOVERY_TIMEOUT = 1.0
"""Seconds to wait for the sentinels' answers (and the chosen master's role).

A sentinel that has not answered by then is left out; only when none has
does discovery fail. Bounded so that
one hung sentinel (SIGSTOP, a dropped link) delays a discovery by at most
this much, not by its socket timeout.
"""

_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@dataclass(frozen=True)
class SentinelAnswer:
    """What one sentinel says of a service's master."""

    address: tuple[str, int]
    epoch: int
    """The master's ``config-epoch``: raised by every failover."""
    usable: bool
    """Flagged a master, neither ``s_down`` nor ``o_down``, seeing enough other sentinels."""


def answer_of(state: Mapping[str, Any], min_other_sentinels: int = 0) -> SentinelAnswer:
    """A sentinel's answer from its ``SENTINEL MASTERS`` entry, as redis-py parses it."""
    usable = (
        bool(state.get("is_master"))
        and not state.get("is_sdown")
        and not state.get("is_odown")
        and int(state.get("num-other-sentinels", 0)) >= min_other_sentinels
    )
    return SentinelAnswer(
        (str(state["ip"]), int(state["port"])), int(state.get("config-epoch", 0)), usable
    )


def ranked_masters(answers: list[SentinelAnswer]) -> list[tuple[str, int]]:
    """The addresses worth trying, best first.

    Only the highest epoch any sentinel reports counts, down or not: a lower
    one is older news. Among the usable answers at that epoch, the address
    most sentinels name comes first (the same epoch naming two masters means
    sentinels configured apart: the majority wins). Empty when no usable
    answer carries the highest epoch.
    """
    if not answers:
        return []
    newest = max(answer.epoch for answer in answers)
    votes = Counter(a.address for a in answers if a.epoch == newest and a.usable)
    return [address for address, _ in votes.most_common()]


def _name(sentinel: Any) -> str:
    kwargs = getattr(getattr(sentinel, "connection_pool", None), "connection_kwargs", {})
    return f"sentinel {kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


class NewestMasterSentinel(Sentinel):
    """A :class:`~redis.asyncio.sentinel.Sentinel` that follows the newest master.

    Args:
        *args: As for :class:`~redis.asyncio.sentinel.Sentinel`.
        timeout: Seconds to wait for the sentinels and the master's role
            (:data:`DISCOVERY_TIMEOUT`).
        **kwargs: As for :class:`~redis.asyncio.sentinel.Sentinel`.
    """

    def __init__(self, *args: Any, timeout: float = DISCOVERY_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        """Ask every sentinel; return the newest master that says ``role:master``.

        Raises:
            MasterNotFoundError: No sentinel answered in time, none names a
                usable master at the newest epoch, or none of those masters
                answers as a master.
        """
        replies = await asyncio.gather(*(self._ask(s, service_name) for s in self.sentinels))
        answers = [reply for reply in replies if isinstance(reply, SentinelAnswer)]
        errors = [reply for reply in replies if isinstance(reply, str)]
        for address in ranked_masters(answers):
            if self._force_master_ip is not None:
                address = (self._force_master_ip, address[1])
            found = await self._role(address)
            if found == "master":
                return address
            errors.append(f"master {address[0]}:{address[1]}: {found}")
        newest = max((answer.epoch for answer in answers), default=None)
        raise MasterNotFoundError(
            f"No master found for {service_name!r}"
            + ("" if newest is None else f" at config-epoch {newest}")
            + (f" : {', '.join(errors)}" if errors else "")
        )

    async def _ask(self, sentinel: Redis, service_name: str) -> SentinelAnswer | str | None:
        """One sentinel's answer; a text saying why there is none; None if it does not know."""
        try:
            async with asyncio.timeout(self.timeout):
                masters = await sentinel.sentinel_masters()
        except TimeoutError:
            return f"{_name(sentinel)}: no answer within {self.timeout:g} s"
        except _UNREACHABLE as exc:
            return f"{_name(sentinel)}: {type(exc).__name__}({exc})"
        # A mapping by name, or a list of states (redis-py's unified replies).
        states = masters.values() if isinstance(masters, dict) else masters
        for state in states:
            if state.get("name") == service_name:
                return answer_of(state, self.min_other_sentinels)
        return None

    async def _role(self, address: tuple[str, int]) -> str:
        """``master``, another role, or why the master could not be asked.

        A server that refuses ``INFO`` (ACL) or the credentials is taken at
        the sentinels' word: it answered, a write to a replica still gets
        ``READONLY``, and the connection that follows names a refusal as the
        master's, not as the sentinels'.
        """
        probe = Redis(host=address[0], port=address[1], **self.connection_kwargs)
        try:
            async with asyncio.timeout(self.timeout):
                info = await probe.info("replication")
        except (redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError):
            return "master"
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
        except _UNREACHABLE as exc:
            return f"cannot be reached ({type(exc).__name__}: {exc})"
        finally:
            await probe.aclose()
        role = str(info.get("role", "master"))
        return role if role == "master" else f"answers as a {role}"
