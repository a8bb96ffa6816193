"""The master a Sentinel URL follows: the newest answer of all the sentinels, not the first."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.exceptions
from redis.asyncio.sentinel import MasterNotFoundError

from ccat_buffering_redis._sentinel import NewestMasterSentinel

OLD, NEW, OTHER = ("10.0.0.1", 6379), ("10.0.0.2", 6379), ("10.0.0.3", 6379)


def state(address: tuple[str, int], epoch: int, flags: str = "master") -> dict[str, Any]:
    """A ``SENTINEL MASTERS`` entry as redis-py parses it."""
    marks = set(flags.split(","))
    return {
        "ip": address[0],
        "port": address[1],
        "config-epoch": epoch,
        "flags": flags,
        "is_master": "master" in marks,
        "is_sdown": "s_down" in marks,
        "is_odown": "o_down" in marks,
        "num-other-sentinels": 2,
    }


class FakeSentinel:
    """Answers ``SENTINEL MASTERS`` with ``answer``: a state, an exception, or never ("hang")."""

    def __init__(self, answer: dict[str, Any] | Exception | str) -> None:
        self.answer = answer

    async def sentinel_masters(self) -> dict[str, dict[str, Any]]:
        if self.answer == "hang":
            await asyncio.sleep(3600)
        if isinstance(self.answer, Exception):
            raise self.answer
        assert isinstance(self.answer, dict)
        if not self.answer:
            return {}  # a sentinel that does not monitor the service
        return {"site-buffer": {"name": "site-buffer", **self.answer}}


class Discovery(NewestMasterSentinel):
    """Fake sentinels in the given order; the masters' roles from ``roles`` (default master)."""

    def __init__(self, *answers: dict[str, Any] | Exception | str, **roles: str) -> None:
        super().__init__([], timeout=0.3)
        self.sentinels = [FakeSentinel(a) for a in answers]  # type: ignore[misc]
        self.roles = roles
        self.asked: list[tuple[str, int]] = []

    async def _role(self, address: tuple[str, int]) -> str:
        self.asked.append(address)
        return self.roles.get(address[0].replace(".", "_"), "master")


async def test_the_newest_epoch_wins_over_a_stale_first_answer() -> None:
    discovery = Discovery(
        state(OLD, 0),  # stale, and the first to answer: redis-py's own would follow it
        state(OTHER, 2, "master,s_down"),  # newest, but says its master is down
        state(NEW, 2),
        state(NEW, 2),
    )
    assert await discovery.discover_master("site-buffer") == NEW
    assert discovery.asked == [NEW]


async def test_a_hung_or_unreachable_sentinel_costs_at_most_the_timeout() -> None:
    discovery = Discovery(
        "hang", redis.exceptions.ConnectionError("refused"), state(OLD, 1), state(NEW, 3), {}
    )  # one does not know the service
    started = time.monotonic()
    assert await discovery.discover_master("site-buffer") == NEW
    assert time.monotonic() - started < 1.0


async def test_no_fallback_to_an_older_epoch() -> None:
    # The only sentinel that knows of the failover says the new master is down;
    # the stale ones name the old master: wait (an outage) rather than write there.
    discovery = Discovery(state(OLD, 0), state(OLD, 0), state(NEW, 1, "master,o_down,s_down"))
    with pytest.raises(MasterNotFoundError, match="config-epoch 1"):
        await discovery.discover_master("site-buffer")
    assert discovery.asked == []


async def test_the_chosen_master_must_say_it_is_one() -> None:
    # A master not yet promoted (or already demoted) answers as a replica: no older answer
    # is taken instead.
    discovery = Discovery(state(OLD, 0), state(NEW, 1), **{"10_0_0_2": "answers as a slave"})
    with pytest.raises(MasterNotFoundError, match="answers as a slave"):
        await discovery.discover_master("site-buffer")
    assert discovery.asked == [NEW]


async def test_a_tie_goes_to_the_majority() -> None:
    discovery = Discovery(state(OTHER, 4), state(NEW, 4), state(NEW, 4))
    assert await discovery.discover_master("site-buffer") == NEW
    discovery = Discovery(state(OTHER, 4), state(NEW, 4), state(NEW, 4), **{"10_0_0_2": "down"})
    assert await discovery.discover_master("site-buffer") == OTHER  # the majority's is not a master


async def test_no_answer_at_all_names_every_sentinel() -> None:
    discovery = Discovery(redis.exceptions.ConnectionError("refused"), "hang")
    with pytest.raises(
        MasterNotFoundError, match=r"ConnectionError\(refused\), .*no answer within 0.3 s"
    ):
        await discovery.discover_master("site-buffer")


async def test_a_list_of_states_is_read_too() -> None:
    # redis-py answers SENTINEL MASTERS as a list of states with its unified replies.
    class Listing(FakeSentinel):
        async def sentinel_masters(self) -> list[dict[str, Any]]:  # type: ignore[override]
            other = {"name": "another-service", **state(OTHER, 9)}
            return [other, {"name": "site-buffer", **state(NEW, 1)}]

    discovery = Discovery(state(OLD, 0))
    discovery.sentinels.append(Listing({}))  # type: ignore[arg-type]
    assert await discovery.discover_master("site-buffer") == NEW
