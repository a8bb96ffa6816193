"""The contract of :class:`~ccat_buffering.buffer.protocols.StatusStore`."""

from __future__ import annotations

import datetime as dt

import pytest

from ccat_buffering.buffer.protocols import Backend
from ccat_buffering.testing._base import ContractHooks
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import TransactionState

__all__ = ["StatusStoreContract"]

_NON_TERMINAL = [state for state in TransactionState if not state.is_terminal]
_TERMINAL = [state for state in TransactionState if state.is_terminal]


class StatusStoreContract(ContractHooks):
    """Statuses: get, get many, put with a TTL from the terminal state, ids and counts."""

    async def test_status_get_unknown_returns_none(self, backend: Backend) -> None:
        """An unknown transaction has no status."""
        assert await backend.status.get("unknown") is None

    async def test_status_put_then_get_round_trips(self, backend: Backend) -> None:
        """Every field comes back as it was put."""
        at = dt.datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)
        status = self.make_status(
            TransactionState.COMMITTED,
            attempts=2,
            last_error="duplicate key value violates unique constraint",
            commit_lsn=LSN("16/B374D848"),
            created_at=at,
            updated_at=at + dt.timedelta(seconds=5),
            committed_at=at + dt.timedelta(seconds=4),
        )
        await backend.status.put(status, 60.0)
        assert await backend.status.get(status.transaction_id) == status

    async def test_status_put_replaces_previous(self, backend: Backend) -> None:
        """A later put replaces the status and moves it between state indexes."""
        status = self.make_status(TransactionState.BUFFERED)
        await backend.status.put(status, 60.0)
        later = status.advance(TransactionState.RETRYING, attempts=1, last_error="boom")
        await backend.status.put(later, 60.0)
        assert await backend.status.get(status.transaction_id) == later
        assert await backend.status.ids(TransactionState.BUFFERED) == []
        assert await backend.status.ids(TransactionState.RETRYING) == [status.transaction_id]
        counts = await backend.status.counts()
        assert (counts[TransactionState.BUFFERED], counts[TransactionState.RETRYING]) == (0, 1)

    async def test_status_get_many_in_order_of_ids(self, backend: Backend) -> None:
        """``get_many`` answers in the order asked, ``None`` where unknown."""
        first = self.make_status(TransactionState.BUFFERED)
        second = self.make_status(TransactionState.FAILED, last_error="boom")
        await backend.status.put(first, 60.0)
        await backend.status.put(second, 60.0)
        ids = [second.transaction_id, "unknown", first.transaction_id]
        assert await backend.status.get_many(ids) == [second, None, first]
        assert await backend.status.get_many([]) == []

    async def test_status_non_terminal_never_expires(self, backend: Backend) -> None:
        """A status that is not terminal, in any such state, outlives its TTL by far."""
        statuses = [self.make_status(state, commit_lsn=LSN("0/10")) for state in _NON_TERMINAL]
        for status in statuses:
            await backend.status.put(status, self.tick)
        await self.advance(3 * self.tick)
        ids = [status.transaction_id for status in statuses]
        assert await backend.status.get_many(ids) == statuses
        counts = await backend.status.counts()
        for status in statuses:
            assert await backend.status.ids(status.state) == [status.transaction_id]
            assert counts[status.state] == 1

    @pytest.mark.parametrize("state", _TERMINAL, ids=str)
    async def test_status_terminal_expires_after_ttl(
        self, backend: Backend, state: TransactionState
    ) -> None:
        """A terminal status lives ``ttl_seconds``, then is gone from get, ids and counts."""
        status = self.make_status(state)
        await backend.status.put(status, 2 * self.tick)
        await self.advance(self.tick)
        assert await backend.status.get(status.transaction_id) == status
        await self.advance(self.tick)

        async def gone() -> bool:
            return await backend.status.get(status.transaction_id) is None

        await self.eventually(gone, f"a {state} status with a 2-tick TTL is gone after 2 ticks")
        assert await backend.status.get_many([status.transaction_id]) == [None]
        assert await backend.status.ids(state) == []
        assert (await backend.status.counts())[state] == 0

    async def test_status_ttl_starts_at_the_terminal_state(self, backend: Backend) -> None:
        """Time spent unfinished does not count against the TTL."""
        status = self.make_status(TransactionState.BUFFERED)
        await backend.status.put(status, self.tick)
        await self.advance(2 * self.tick)
        done = status.advance(TransactionState.REPLICATED)
        await backend.status.put(done, 2 * self.tick)
        await self.advance(self.tick)
        assert await backend.status.get(status.transaction_id) == done
        await self.advance(self.tick)

        async def gone() -> bool:
            return await backend.status.get(status.transaction_id) is None

        await self.eventually(gone, "the status is gone 2 ticks after it became terminal")

    async def test_status_non_terminal_put_removes_expiry(self, backend: Backend) -> None:
        """A failed status put back to buffered (a replay) no longer expires."""
        status = self.make_status(TransactionState.FAILED, last_error="boom")
        await backend.status.put(status, 2 * self.tick)
        await self.advance(self.tick)
        replayed = status.advance(TransactionState.BUFFERED)
        await backend.status.put(replayed, 2 * self.tick)
        await self.advance(3 * self.tick)
        assert await backend.status.get(status.transaction_id) == replayed
        assert await backend.status.ids(TransactionState.BUFFERED) == [status.transaction_id]

    async def test_status_ids_in_put_order(self, backend: Backend) -> None:
        """States other than committed list their ids in the order they were put."""
        for transaction_id in ["tx-c", "tx-a", "tx-b"]:
            await backend.status.put(
                self.make_status(TransactionState.PROCESSING, transaction_id), 60
            )
        await backend.status.put(self.make_status(TransactionState.BUFFERED, "tx-d"), 60)
        assert await backend.status.ids(TransactionState.PROCESSING) == ["tx-c", "tx-a", "tx-b"]
        assert await backend.status.ids(TransactionState.PROCESSING, limit=2) == ["tx-c", "tx-a"]
        assert await backend.status.ids(TransactionState.BUFFERED) == ["tx-d"]
        assert await backend.status.ids(TransactionState.FAILED) == []

    async def test_status_committed_ids_in_lsn_order(self, backend: Backend) -> None:
        """Committed ids come in commit-LSN order as integers, those without an LSN first."""
        put_order = [("tx-1-0", "1/0"), ("tx-0-10", "0/10"), ("tx-none", None)]
        put_order += [("tx-10-0", "10/0"), ("tx-0-FFFFFFFF", "0/FFFFFFFF")]
        put_order += [("tx-F-0", "F/0"), ("tx-0-9", "0/9")]
        for transaction_id, lsn in put_order:
            status = self.make_status(
                TransactionState.COMMITTED,
                transaction_id,
                commit_lsn=None if lsn is None else LSN(lsn),
            )
            await backend.status.put(status, 60.0)
        expected = ["tx-none", "tx-0-9", "tx-0-10", "tx-0-FFFFFFFF", "tx-1-0"]
        expected += ["tx-F-0", "tx-10-0"]
        assert await backend.status.ids(TransactionState.COMMITTED) == expected
        assert await backend.status.ids(TransactionState.COMMITTED, limit=3) == expected[:3]

    async def test_status_committed_ids_order_beyond_float_precision(
        self, backend: Backend
    ) -> None:
        """LSNs that differ by one above 2**53 still order exactly."""
        # Names sort against LSN order, so neither a name tie-break nor text order passes.
        by_name = {
            "tx-a": "FFFFFFFF/FFFFFFFF",
            "tx-b": "FFFFFFFF/FFFFFFFE",
            "tx-c": "200000/1",
            "tx-d": "200000/0",
        }
        for transaction_id, lsn in by_name.items():
            status = self.make_status(
                TransactionState.COMMITTED, transaction_id, commit_lsn=LSN(lsn)
            )
            await backend.status.put(status, 60.0)
        expected = ["tx-d", "tx-c", "tx-b", "tx-a"]
        assert await backend.status.ids(TransactionState.COMMITTED) == expected

    async def test_status_counts_every_state(self, backend: Backend) -> None:
        """Counts name every state, zero where none are."""
        assert await backend.status.counts() == dict.fromkeys(TransactionState, 0)
        await backend.status.put(self.make_status(TransactionState.BUFFERED), 60.0)
        await backend.status.put(self.make_status(TransactionState.BUFFERED), 60.0)
        await backend.status.put(self.make_status(TransactionState.FAILED), 60.0)
        expected = dict.fromkeys(TransactionState, 0)
        expected[TransactionState.BUFFERED] = 2
        expected[TransactionState.FAILED] = 1
        assert await backend.status.counts() == expected
