"""Direct store calls with bad arguments: each raises at once and writes nothing.

The checks themselves live in :mod:`ccat_buffering.buffer.checks`; this suite holds
a backend to them through every store method, not only through
:class:`~ccat_buffering.buffer.protocols.WriteBatch` (see ``AtomicContract``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from ccat_buffering.buffer.protocols import Backend, CacheKind, CacheWrite, SupportsProcessorReports
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.testing._base import LONG_LEASE
from ccat_buffering.testing._capabilities import CapabilityFlags
from ccat_buffering.write.models import TransactionState, TransactionStatus

__all__ = ["ArgumentContract"]

_OBS = "Observation"
_WRITE = CacheWrite(_OBS, "r9", CacheKind.CREATE, {"a": 1})
_STATUS = TransactionStatus(transaction_id="tx-bad", state=TransactionState.BUFFERED)
_NOT_A_STATUS: Any = {"transaction_id": "tx-bad", "state": "buffered"}
_NOT_A_WRITE: Any = {"model": _OBS, "record_id": "r9", "kind": "create"}


def _status(transaction_id: str) -> TransactionStatus:
    return TransactionStatus(transaction_id=transaction_id, state=TransactionState.BUFFERED)


@dataclass(frozen=True)
class _Site:
    """What the site holds before the bad call: an entry in flight under ``receipt``."""

    backend: Backend
    receipt: str


_Call = Callable[[_Site], Awaitable[object]]
_Case = tuple[_Call, type[Exception]] | tuple[_Call, type[Exception], str]
"""The call, the error it must raise, and the capability flag it needs (if any)."""


def _bytes(text: str) -> Any:
    return text.encode()


# One case per way to get an argument wrong, named <method>-<what is wrong>.
_BAD_CALLS: dict[str, _Case] = {
    "push-bytes": (lambda s: s.backend.buffer.push([_bytes("x")]), TypeError),
    "push-text-and-bytes": (lambda s: s.backend.buffer.push(["ok", _bytes("x")]), TypeError),
    "push-one-text": (lambda s: s.backend.buffer.push("text"), TypeError),
    "claim-zero": (lambda s: s.backend.buffer.claim(0, LONG_LEASE), ValueError),
    "claim-negative-lease": (lambda s: s.backend.buffer.claim(1, -1.0), ValueError),
    "claim-nan-lease": (lambda s: s.backend.buffer.claim(1, math.nan), ValueError),
    "ack-bytes": (lambda s: s.backend.buffer.ack([_bytes(s.receipt)]), TypeError),
    "ack-one-text": (lambda s: s.backend.buffer.ack(s.receipt), TypeError),
    "retry_later-negative-delay": (
        lambda s: s.backend.buffer.retry_later([s.receipt], -1.0),
        ValueError,
    ),
    "retry_later-nan-delay": (
        lambda s: s.backend.buffer.retry_later([s.receipt], math.nan),
        ValueError,
    ),
    "retry_later-one-text": (lambda s: s.backend.buffer.retry_later(s.receipt, 0), TypeError),
    "dead_letter-bytes-reason": (
        lambda s: s.backend.buffer.dead_letter(s.receipt, _bytes("boom"), "tx-1"),
        TypeError,
    ),
    "replay-one-text": (lambda s: s.backend.dead_letters.replay("tx-1"), TypeError),
    "purge-one-text": (lambda s: s.backend.dead_letters.purge("tx-1"), TypeError),
    "put-not-a-status": (
        lambda s: s.backend.status.put(_NOT_A_STATUS, 60.0),
        TypeError,
    ),
    "put-negative-ttl": (lambda s: s.backend.status.put(_STATUS, -1.0), ValueError),
    "put-nan-ttl": (lambda s: s.backend.status.put(_STATUS, math.nan), ValueError),
    "put-id-with-comma": (
        lambda s: s.backend.status.put(_status("a,b"), 60.0),
        TransactionValidationError,
    ),
    "put-id-with-separator": (
        lambda s: s.backend.status.put(_status("a\x1fb"), 60.0),
        TransactionValidationError,
    ),
    "write-bad-model": (
        lambda s: s.backend.cache.write(
            "tx-bad", [CacheWrite("Observation:*", "r9", CacheKind.CREATE, {})], 60.0
        ),
        TransactionValidationError,
    ),
    "write-negative-ttl": (lambda s: s.backend.cache.write("tx-bad", [_WRITE], -1.0), ValueError),
    "write-not-a-cache-write": (
        lambda s: s.backend.cache.write("tx-bad", [_WRITE, _NOT_A_WRITE], 60.0),
        TypeError,
    ),
    "extend-negative-ttl": (lambda s: s.backend.cache.extend(["tx-1"], -1.0), ValueError),
    "extend-one-text": (lambda s: s.backend.cache.extend("tx-1", 60.0), TypeError),
    "release-one-text": (lambda s: s.backend.cache.release("tx-1"), TypeError),
    "release-id-with-separator": (
        lambda s: s.backend.cache.release(["a\x1fb"]),
        TransactionValidationError,
    ),
    "acquire-negative-ttl": (lambda s: s.backend.lease.acquire("other", -1.0), ValueError),
    "acquire-bytes-holder": (lambda s: s.backend.lease.acquire(_bytes("other"), 60.0), TypeError),
    "acquire-empty-holder": (lambda s: s.backend.lease.acquire("", 60.0), ValueError),
    "renew-nan-ttl": (lambda s: s.backend.lease.renew("holder", math.nan), ValueError),
    "release_lease-bytes-holder": (lambda s: s.backend.lease.release(_bytes("holder")), TypeError),
    "publish_report-bytes": (
        lambda s: s.backend.lease.publish_report(_bytes("{}"), 60.0),  # type: ignore[attr-defined]
        TypeError,
        "supports_processor_reports",
    ),
    "publish_report-negative-ttl": (
        lambda s: s.backend.lease.publish_report("{}", -1.0),  # type: ignore[attr-defined]
        ValueError,
        "supports_processor_reports",
    ),
}


class ArgumentContract(CapabilityFlags):
    """Every store method refuses bad arguments at once, with the contract's error.

    Attributes:
        argument_gaps: Ids of the cases above (``push-one-text``, ...) that
            this backend does not refuse yet, each with why: they run as
            strict expected failures, so the gap shows until it is closed.
    """

    argument_gaps: ClassVar[Mapping[str, str]] = {}

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Run each bad call as its own case, expected to fail where the backend lists a gap."""
        if "bad_call" not in metafunc.fixturenames:
            return
        gaps = dict(getattr(metafunc.cls, "argument_gaps", {}))
        params = [
            pytest.param(
                case,
                id=name,
                marks=[pytest.mark.xfail(strict=True, reason=gaps[name])] if name in gaps else [],
            )
            for name, case in _BAD_CALLS.items()
        ]
        unknown = set(gaps) - set(_BAD_CALLS)
        assert not unknown, f"argument_gaps names no case: {sorted(unknown)}"
        metafunc.parametrize("bad_call", params)

    async def site_snapshot(self, backend: Backend) -> tuple[object, ...]:
        """What a write could change, without the times that move on their own."""
        stats = await backend.buffer.stats()
        letters = [(d.letter_id, d.payload, d.reason) for d in await backend.dead_letters.list()]
        cached = [
            (r.record_id, dict(r.fields), r.created, r.deleted, r.transaction_ids)
            for r in await backend.cache.list(_OBS)
        ]
        lease = await backend.lease.current()
        return (
            (stats.depth, stats.in_flight, stats.dead_letters, stats.held_until),
            letters,
            await backend.status.counts(),
            [await backend.status.get(t) for t in ("tx-1", "tx-bad", "a,b")],
            cached,
            await backend.cache.created_by(_OBS, "r9"),
            None if lease is None else lease.holder,
            await self.processor_report(backend),
        )

    async def processor_report(self, backend: Backend) -> str | None:
        """The published report, where the backend has reports."""
        if not self.supports_processor_reports:
            return None
        lease = backend.lease
        assert isinstance(lease, SupportsProcessorReports)
        return await lease.processor_report()

    async def test_arguments_bad_direct_call_raises_and_writes_nothing(
        self, backend: Backend, bad_call: _Case
    ) -> None:
        """The call raises the contract's error, and the site holds what it held before."""
        call, error, *needs = bad_call
        for flag in needs:
            self.require(flag)
        await backend.buffer.push(["claimed", "waiting"])
        await backend.status.put(self.make_status(transaction_id="tx-1"), 60.0)
        await backend.cache.write("tx-1", [CacheWrite(_OBS, "r1", CacheKind.CREATE, {"a": 1})], 60)
        assert await backend.lease.acquire("holder", LONG_LEASE)
        (claim,) = await backend.buffer.claim(1, LONG_LEASE)
        before = await self.site_snapshot(backend)
        with pytest.raises(error):
            await call(_Site(backend, claim.receipt))
        assert await self.site_snapshot(backend) == before
