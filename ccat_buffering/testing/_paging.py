"""The contracts of the capabilities the console reads pages and charts through.

:class:`~ccat_buffering.protocols.SupportsStatusPaging` (on ``backend.status``),
:class:`~ccat_buffering.protocols.SupportsLetterPaging` (on
``backend.dead_letters``) and :class:`~ccat_buffering.protocols.SupportsChartSamples`
(on the backend); each test skips where the backend's test class does not set
the capability's flag (see :class:`~ccat_buffering.testing.CapabilityFlags`).
"""

from __future__ import annotations

import pytest

from ccat_buffering.lsn import LSN
from ccat_buffering.models import TransactionState
from ccat_buffering.protocols import (
    Backend,
    SupportsChartSamples,
    SupportsLetterPaging,
    SupportsStatusPaging,
)
from ccat_buffering.testing._base import LONG_LEASE
from ccat_buffering.testing._capabilities import CapabilityFlags

__all__ = ["ChartSamplesContract", "LetterPagingContract", "StatusPagingContract"]


class StatusPagingContract(CapabilityFlags):
    """:class:`~ccat_buffering.protocols.SupportsStatusPaging`, on ``backend.status``."""

    def status_paging(self, backend: Backend) -> SupportsStatusPaging:
        """The status store as the capability, or skip."""
        self.require("supports_status_paging")
        status = backend.status
        assert isinstance(status, SupportsStatusPaging)
        return status

    async def _put(self, backend: Backend, state: TransactionState, n: int) -> list[str]:
        ids = []
        for i in range(n):
            # One WAL segment (the same high 32 bits): the commits sort by their low part.
            lsn = LSN(f"5/{0x100 + i:X}") if state is TransactionState.COMMITTED else None
            status = self.make_status(state, f"page-{state}-{i}", commit_lsn=lsn)
            await backend.status.put(status, 600.0)
            ids.append(status.transaction_id)
        return ids

    @pytest.mark.parametrize(
        "state", [TransactionState.BUFFERED, TransactionState.COMMITTED, TransactionState.FAILED]
    )
    async def test_status_pages_walk_the_state_in_order(
        self, backend: Backend, state: TransactionState
    ) -> None:
        """Pages from cursors give every id once, in ``ids`` order; the last has no cursor."""
        paging = self.status_paging(backend)
        await self._put(backend, state, 5)
        walked, cursor, pages = [], None, 0
        while True:
            ids, cursor = await paging.ids_after(state, cursor, 2)
            walked += ids
            pages += 1
            if cursor is None:
                break
        assert walked == await backend.status.ids(state) and len(walked) == 5
        assert pages == 3
        assert await paging.ids_after(state, None, 5) == (walked, None)  # exactly all: no next
        assert await paging.ids_after(TransactionState.RETRYING, None, 5) == ([], None)

    @pytest.mark.parametrize("state", [TransactionState.BUFFERED, TransactionState.COMMITTED])
    async def test_status_page_goes_on_after_its_cursors_id_left_the_state(
        self, backend: Backend, state: TransactionState
    ) -> None:
        """A cursor is a place: its id moving on neither empties nor repeats the next page."""
        paging = self.status_paging(backend)
        ids = await self._put(backend, state, 5)
        first, cursor = await paging.ids_after(state, None, 2)
        assert first == ids[:2] and cursor is not None
        moved = await backend.status.get(ids[1])
        assert moved is not None
        await backend.status.put(moved.advance(TransactionState.REPLICATED), 600.0)
        page, following = await paging.ids_after(state, cursor, 2)
        assert page == ids[2:4] and following is not None
        assert await paging.ids_after(state, following, 2) == (ids[4:], None)

    async def test_status_page_refuses_a_cursor_it_did_not_give(self, backend: Backend) -> None:
        """Text that is no cursor of the store is refused, not read as the start."""
        paging = self.status_paging(backend)
        for state in (TransactionState.BUFFERED, TransactionState.COMMITTED):
            with pytest.raises(ValueError, match="cursor"):
                await paging.ids_after(state, "not a cursor!", 10)


class LetterPagingContract(CapabilityFlags):
    """:class:`~ccat_buffering.protocols.SupportsLetterPaging`, on ``backend.dead_letters``."""

    def letter_paging(self, backend: Backend) -> SupportsLetterPaging:
        """The dead-letter store as the capability, or skip."""
        self.require("supports_letter_paging")
        letters = backend.dead_letters
        assert isinstance(letters, SupportsLetterPaging)
        return letters

    async def _letters(self, backend: Backend, n: int) -> list[str]:
        await backend.buffer.push([f'{{"n": {i}}}' for i in range(n)])
        for i, claim in enumerate(await backend.buffer.claim(n, LONG_LEASE)):
            assert await backend.buffer.dead_letter(claim.receipt, f"boom {i}", f"letter-{i}")
        return [f"letter-{i}" for i in range(n)]

    async def test_letter_pages_walk_the_letters_in_arrival_order(self, backend: Backend) -> None:
        """Pages give every letter once, as ``list`` does, whole; the last has no cursor."""
        paging = self.letter_paging(backend)
        ids = await self._letters(backend, 5)
        walked, cursor = [], None
        for _ in range(3):
            page, cursor = await paging.letters_after(cursor, 2)
            walked += page
        assert cursor is None
        assert walked == await backend.dead_letters.list()
        assert [letter.letter_id for letter in walked] == ids
        assert (walked[4].payload, walked[4].reason) == ('{"n": 4}', "boom 4")
        assert await paging.letters_after(None, 5) == (walked, None)
        assert await paging.letters_after(None, 0) == ([], None)

    async def test_letter_page_goes_on_after_its_letter_left(self, backend: Backend) -> None:
        """A replayed or purged letter at the cursor neither empties nor repeats the next page."""
        paging = self.letter_paging(backend)
        ids = await self._letters(backend, 5)
        first, cursor = await paging.letters_after(None, 2)
        assert [letter.letter_id for letter in first] == ids[:2]
        await backend.dead_letters.replay([ids[1]])
        await backend.dead_letters.purge([ids[2]])
        page, cursor = await paging.letters_after(cursor, 2)
        assert ([letter.letter_id for letter in page], cursor) == (ids[3:], None)

    async def test_letter_page_refuses_a_cursor_it_did_not_give(self, backend: Backend) -> None:
        """Text that is no cursor of the store is refused."""
        with pytest.raises(ValueError, match="cursor"):
            await self.letter_paging(backend).letters_after("not a cursor!", 10)


class ChartSamplesContract(CapabilityFlags):
    """:class:`~ccat_buffering.protocols.SupportsChartSamples`."""

    def samples(self, backend: Backend) -> SupportsChartSamples:
        """The backend as the capability, or skip."""
        self.require("supports_chart_samples")
        assert isinstance(backend, SupportsChartSamples)
        return backend

    async def test_chart_samples_read_newest_first_and_keep_the_newest(
        self, backend: Backend
    ) -> None:
        """Empty at first; newest first, as written; beyond ``keep`` the oldest go."""
        samples = self.samples(backend)
        assert await samples.chart_samples() == []
        for n in range(5):
            await samples.append_sample(f'{{"n": {n}, "text": "é"}}', 3)
        assert await samples.chart_samples() == [f'{{"n": {n}, "text": "é"}}' for n in (4, 3, 2)]
        assert await samples.chart_samples(2) == [f'{{"n": {n}, "text": "é"}}' for n in (4, 3)]
        assert await samples.chart_samples(0) == []

    async def test_chart_samples_apart_from_the_audit_log(self, backend: Backend) -> None:
        """A sample is no operator's action, and bad arguments write nothing."""
        samples = self.samples(backend)
        await samples.append_sample("{}", 10)
        if self.supports_audit_log:
            assert await backend.audit_entries() == []  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            await samples.append_sample(b"{}", 10)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await samples.append_sample("{}", 0)
        assert await samples.chart_samples() == ["{}"]
