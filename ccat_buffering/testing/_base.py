"""The hooks every contract mixin shares, and the helpers its tests use.

A backend's test class overrides the ``backend`` fixture (and, for a backend
on an injected clock, :meth:`ContractHooks.advance` and
:meth:`ContractHooks.now`); everything else is shared.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import pytest
import pytest_asyncio

from ccat_buffering.buffer.protocols import Backend, Claim
from ccat_buffering.write.models import TransactionState, TransactionStatus

__all__ = ["ContractHooks", "new_site_name"]

LONG_LEASE = 60.0
"""A lease no test waits out: the claim stays in flight for the whole test."""


def new_site_name() -> str:
    """Return a site name that no other test uses, such as ``test-3f2a9c01b7de``."""
    return f"test-{uuid.uuid4().hex[:12]}"


class ContractHooks:
    """What a backend's test class provides to the contract mixins.

    Override the ``backend`` fixture: it yields a fresh, empty backend for the
    site named by the ``site`` fixture and closes it afterwards. A backend on
    an injected clock also overrides :meth:`advance` and :meth:`now` (and sets
    :attr:`clock_is_exact`); a backend on real time keeps the defaults, which
    wait for real.

    Attributes:
        clock_is_exact: :meth:`now` reads the backend's own clock, so the
            times a backend reports compare exactly and a condition that
            follows from :meth:`advance` holds at once. Otherwise times compare
            within :attr:`clock_tolerance_seconds`, and such conditions are
            polled for up to :attr:`settle_seconds`.
        clock_tolerance_seconds: How far a reported time may stray from
            :meth:`now` when the clock is not exact.
        settle_seconds: How long to poll for a condition when the clock is
            not exact.
        tick: The contract's unit of time, in seconds: every TTL, lease and
            delay that a test waits out is a few ticks (the longest wait is
            three). A backend on real time whose TTLs have a finer grain than
            seconds may shorten it to make its suite quicker, as far as the
            machine's latency allows: a test checks that a key still lives
            half a tick before it expires. Shorten
            :attr:`clock_tolerance_seconds` with it, so that a time the backend
            reports is still told from one a tick off.
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    clock_is_exact: ClassVar[bool] = False
    clock_tolerance_seconds: ClassVar[float] = 1.0
    settle_seconds: ClassVar[float] = 2.0
    tick: ClassVar[float] = 1.0

    @pytest.fixture
    def site(self) -> str:
        """A fresh site name for this test."""
        return new_site_name()

    @pytest_asyncio.fixture
    async def backend(self, site: str) -> AsyncIterator[Backend]:
        """Yield a fresh, empty backend for ``site``; a backend's test class overrides this.

        The contract's context-manager test enters and exits the backend
        itself, so closing it again afterwards must be harmless.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override the 'backend' fixture to yield a fresh "
            "Backend for the site given by the 'site' fixture"
        )
        yield  # pragma: no cover

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the backend's clock.

        The default waits in real time; a backend on an injected clock moves
        that clock instead.

        Args:
            seconds: How long.
        """
        await asyncio.sleep(seconds)

    def now(self) -> float:
        """Return the backend's current time in seconds since the epoch."""
        return time.time()

    # -- helpers ------------------------------------------------------------

    def assert_time(self, actual: float | None, expected: float, what: str) -> None:
        """Check a time the backend reported against the one the test expects.

        Args:
            actual: The reported time.
            expected: The expected time, from :meth:`now`.
            what: What the time is, for the message.
        """
        tolerance = 1e-6 if self.clock_is_exact else self.clock_tolerance_seconds
        assert actual is not None, f"{what}: expected about {expected}, got None"
        assert abs(actual - expected) <= tolerance, (
            f"{what}: expected {expected} (within {tolerance} s), got {actual}"
        )

    async def eventually(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        """Poll ``check`` until it holds, failing after a deadline.

        Args:
            check: The condition.
            what: What should come to hold, for the message.
        """
        deadline = time.monotonic() + (0.0 if self.clock_is_exact else self.settle_seconds)
        while not await check():
            if time.monotonic() >= deadline:
                pytest.fail(f"{what}: still not so after the deadline")
            await asyncio.sleep(0.02)

    @staticmethod
    def make_status(
        state: TransactionState = TransactionState.BUFFERED,
        transaction_id: str | None = None,
        **changes: Any,
    ) -> TransactionStatus:
        """Build a status, with a fresh transaction id unless one is given.

        Args:
            state: Its state.
            transaction_id: Its transaction id.
            **changes: Other fields.

        Returns:
            The status.
        """
        return TransactionStatus(
            transaction_id=transaction_id or str(uuid.uuid4()),
            endpoint="contract",
            state=state,
            **changes,
        )

    @staticmethod
    def payloads(claims: list[Claim]) -> list[str]:
        """The payloads of ``claims``, in order."""
        return [claim.payload for claim in claims]

    @staticmethod
    async def drain(backend: Backend, lease_seconds: float = LONG_LEASE) -> list[str]:
        """Claim every claimable entry and return the payloads in claim order.

        Args:
            backend: The backend.
            lease_seconds: The lease of the claims.

        Returns:
            The payloads.
        """
        return [claim.payload for claim in await backend.buffer.claim(1000, lease_seconds)]
