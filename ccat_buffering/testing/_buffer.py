"""The contract of :class:`~ccat_buffering.buffer.protocols.BufferStore`."""

from __future__ import annotations

from ccat_buffering.buffer.protocols import Backend
from ccat_buffering.testing._base import LONG_LEASE, ContractHooks

__all__ = ["BufferStoreContract"]


class BufferStoreContract(ContractHooks):
    """The durable FIFO: push, claim, ack, retry later, dead-letter, recover, stats."""

    async def test_buffer_push_then_claim_in_fifo_order(self, backend: Backend) -> None:
        """Entries come out oldest first, across pushes, each push in its given order."""
        await backend.buffer.push(["a", "b"])
        await backend.buffer.push(["c"])
        claims = await backend.buffer.claim(10, LONG_LEASE)
        assert self.payloads(claims) == ["a", "b", "c"]

    async def test_buffer_push_of_nothing_does_nothing(self, backend: Backend) -> None:
        """An empty push leaves the buffer empty."""
        await backend.buffer.push([])
        assert (await backend.buffer.stats()).depth == 0
        assert await backend.buffer.claim(10, LONG_LEASE) == []

    async def test_buffer_claim_on_empty_buffer_returns_nothing(self, backend: Backend) -> None:
        """Claiming from an empty buffer returns an empty list."""
        assert await backend.buffer.claim(5, LONG_LEASE) == []

    async def test_buffer_claim_takes_at_most_count(self, backend: Backend) -> None:
        """Each claim takes up to ``count`` entries from the head."""
        await backend.buffer.push(["a", "b", "c", "d", "e"])
        assert self.payloads(await backend.buffer.claim(2, LONG_LEASE)) == ["a", "b"]
        assert self.payloads(await backend.buffer.claim(2, LONG_LEASE)) == ["c", "d"]
        assert self.payloads(await backend.buffer.claim(2, LONG_LEASE)) == ["e"]
        assert await backend.buffer.claim(2, LONG_LEASE) == []

    async def test_buffer_claim_sets_lease_expiry(self, backend: Backend) -> None:
        """A claim's lease expires ``lease_seconds`` after the claim."""
        await backend.buffer.push(["a"])
        (claim,) = await backend.buffer.claim(1, 30.0)
        self.assert_time(claim.lease_expires_at, self.now() + 30.0, "lease_expires_at")

    async def test_buffer_every_claim_gets_a_new_receipt(self, backend: Backend) -> None:
        """Receipts are distinct, also when a recovered entry is claimed again."""
        await backend.buffer.push(["a", "b"])
        first = await backend.buffer.claim(2, LONG_LEASE)
        await backend.buffer.recover(include_unexpired=True)
        again = await backend.buffer.claim(2, LONG_LEASE)
        assert self.payloads(again) == ["a", "b"]
        receipts = [claim.receipt for claim in first + again]
        assert len(set(receipts)) == 4

    async def test_buffer_claim_never_removes(self, backend: Backend) -> None:
        """Claimed entries stay in flight, and recovery brings every one back."""
        await backend.buffer.push(["a", "b", "c"])
        await backend.buffer.claim(2, LONG_LEASE)
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight) == (1, 2)
        assert await backend.buffer.recover(include_unexpired=True) == 2
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight) == (3, 0)
        assert await self.drain(backend) == ["a", "b", "c"]

    async def test_buffer_ack_removes_for_good(self, backend: Backend) -> None:
        """An acknowledged entry is gone: recovery does not bring it back."""
        await backend.buffer.push(["a", "b"])
        first, _ = await backend.buffer.claim(2, LONG_LEASE)
        assert await backend.buffer.ack([first.receipt]) == 1
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight) == (0, 1)
        assert await backend.buffer.recover(include_unexpired=True) == 1
        assert await self.drain(backend) == ["b"]

    async def test_buffer_ack_ignores_unknown_receipts(self, backend: Backend) -> None:
        """Unknown receipts, and receipts already acknowledged, count for nothing."""
        await backend.buffer.push(["a", "b"])
        first, _ = await backend.buffer.claim(2, LONG_LEASE)
        assert await backend.buffer.ack(["987654321"]) == 0
        assert await backend.buffer.ack([first.receipt, "987654321"]) == 1
        assert await backend.buffer.ack([first.receipt]) == 0
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight) == (0, 1)

    async def test_buffer_ack_ignores_recovered_receipt(self, backend: Backend) -> None:
        """Acknowledging a recovered claim does not touch its entry."""
        await backend.buffer.push(["a"])
        (claim,) = await backend.buffer.claim(1, LONG_LEASE)
        await backend.buffer.recover(include_unexpired=True)
        assert await backend.buffer.ack([claim.receipt]) == 0
        assert (await backend.buffer.stats()).depth == 1

    async def test_buffer_stale_receipt_cannot_settle_a_later_claim(self, backend: Backend) -> None:
        """A receipt lost to recovery neither acks, retries nor dead-letters the new claim."""
        await backend.buffer.push(["a"])
        (stale,) = await backend.buffer.claim(1, LONG_LEASE)
        await backend.buffer.recover(include_unexpired=True)
        (fresh,) = await backend.buffer.claim(1, LONG_LEASE)
        assert fresh.payload == "a"
        assert await backend.buffer.ack([stale.receipt]) == 0
        assert await backend.buffer.retry_later([stale.receipt], 0) == 0
        assert await backend.buffer.dead_letter(stale.receipt, "stale", "tx-a") is False
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.dead_letters) == (0, 1, 0)
        assert await backend.buffer.ack([fresh.receipt]) == 1

    async def test_buffer_retry_later_returns_entries_in_original_order(
        self, backend: Backend
    ) -> None:
        """Retried entries go back to the head in buffer order, whatever the receipts' order."""
        await backend.buffer.push(["a", "b", "c", "d"])
        claims = await backend.buffer.claim(3, LONG_LEASE)
        receipts = [claim.receipt for claim in reversed(claims)]
        assert await backend.buffer.retry_later(receipts, 0) == 3
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.held_until) == (4, 0, None)
        assert await self.drain(backend) == ["a", "b", "c", "d"]

    async def test_buffer_retry_later_keeps_place_ahead_of_later_entries(
        self, backend: Backend
    ) -> None:
        """A retried entry stays ahead of everything buffered after it."""
        await backend.buffer.push(["a"])
        (claim,) = await backend.buffer.claim(1, LONG_LEASE)
        await backend.buffer.push(["b"])
        assert await backend.buffer.retry_later([claim.receipt], 0) == 1
        assert await self.drain(backend) == ["a", "b"]

    async def test_buffer_retry_later_holds_the_head(self, backend: Backend) -> None:
        """The head cannot be claimed until the delay has passed."""
        await backend.buffer.push(["a", "b"])
        (claim,) = await backend.buffer.claim(1, LONG_LEASE)
        assert await backend.buffer.retry_later([claim.receipt], self.tick) == 1
        stats = await backend.buffer.stats()
        self.assert_time(stats.held_until, self.now() + self.tick, "held_until")
        assert stats.depth == 2
        assert await backend.buffer.claim(1, LONG_LEASE) == []
        await self.advance(self.tick / 2)
        assert await backend.buffer.claim(1, LONG_LEASE) == []
        await self.advance(self.tick / 2)

        async def released() -> bool:
            return (await backend.buffer.stats()).held_until is None

        await self.eventually(released, "the hold of a 1-tick retry is over after 1 tick")
        assert self.payloads(await backend.buffer.claim(1, LONG_LEASE)) == ["a"]

    async def test_buffer_retry_later_zero_lifts_the_hold(self, backend: Backend) -> None:
        """A retry with no delay lifts the hold at once."""
        await backend.buffer.push(["a"])
        (claim,) = await backend.buffer.claim(1, LONG_LEASE)
        await backend.buffer.retry_later([claim.receipt], 60.0)
        assert await backend.buffer.claim(1, LONG_LEASE) == []
        assert await backend.buffer.retry_later([], 0) == 0
        assert (await backend.buffer.stats()).held_until is None
        assert await self.drain(backend) == ["a"]

    async def test_buffer_later_retry_replaces_the_hold(self, backend: Backend) -> None:
        """A later retry's delay replaces the hold, even when shorter."""
        await backend.buffer.push(["a"])
        (claim,) = await backend.buffer.claim(1, LONG_LEASE)
        await backend.buffer.retry_later([claim.receipt], 60.0)
        await backend.buffer.retry_later([], self.tick)
        self.assert_time((await backend.buffer.stats()).held_until, self.now() + self.tick, "hold")
        await self.advance(self.tick)

        async def released() -> bool:
            return (await backend.buffer.stats()).held_until is None

        await self.eventually(released, "the replaced hold is over after 1 tick")
        assert await self.drain(backend) == ["a"]

    async def test_buffer_retry_later_ignores_unknown_receipts(self, backend: Backend) -> None:
        """Unknown receipts are not counted and put nothing back."""
        await backend.buffer.push(["a"])
        (claim,) = await backend.buffer.claim(1, LONG_LEASE)
        assert await backend.buffer.retry_later([claim.receipt, "987654321"], 0) == 1
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight) == (1, 0)

    async def test_buffer_dead_letter_with_transaction_id(self, backend: Backend) -> None:
        """The entry moves to the dead letters under its transaction id, with the reason."""
        await backend.buffer.push(['{"x": 1}'])
        (claim,) = await backend.buffer.claim(1, LONG_LEASE)
        assert await backend.buffer.dead_letter(claim.receipt, "boom", "tx-1") is True
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.dead_letters) == (0, 0, 1)
        letter = await backend.dead_letters.get("tx-1")
        assert letter is not None
        assert (letter.letter_id, letter.payload, letter.reason, letter.transaction_id) == (
            "tx-1",
            '{"x": 1}',
            "boom",
            "tx-1",
        )
        self.assert_time(letter.dead_lettered_at, self.now(), "dead_lettered_at")

    async def test_buffer_dead_letter_without_transaction_id(self, backend: Backend) -> None:
        """An unreadable entry's letter is named ``raw-<receipt>`` and has no transaction id."""
        await backend.buffer.push(["not json"])
        (claim,) = await backend.buffer.claim(1, LONG_LEASE)
        assert await backend.buffer.dead_letter(claim.receipt, "unreadable") is True
        letter = await backend.dead_letters.get(f"raw-{claim.receipt}")
        assert letter is not None
        assert (letter.payload, letter.reason, letter.transaction_id) == (
            "not json",
            "unreadable",
            None,
        )

    async def test_buffer_dead_letter_unknown_receipt(self, backend: Backend) -> None:
        """An unknown receipt moves nothing and returns ``False``."""
        await backend.buffer.push(["a"])
        await backend.buffer.claim(1, LONG_LEASE)
        assert await backend.buffer.dead_letter("987654321", "boom", "tx-1") is False
        stats = await backend.buffer.stats()
        assert (stats.in_flight, stats.dead_letters) == (1, 0)
        assert await backend.dead_letters.get("tx-1") is None

    async def test_buffer_recover_takes_back_only_expired_leases(self, backend: Backend) -> None:
        """Recovery returns claims whose lease expired and leaves live ones in flight."""
        await backend.buffer.push(["a", "b", "c"])
        await backend.buffer.claim(1, self.tick)
        await backend.buffer.claim(1, LONG_LEASE)
        await self.advance(self.tick / 2)
        assert await backend.buffer.recover() == 0
        await self.advance(self.tick / 2)
        recovered = 0

        async def expired_one_back() -> bool:
            nonlocal recovered
            recovered += await backend.buffer.recover()
            return recovered >= 1

        await self.eventually(expired_one_back, "a 1-tick lease is recoverable after 1 tick")
        assert recovered == 1
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight) == (2, 1)
        assert await self.drain(backend) == ["a", "c"]

    async def test_buffer_recover_include_unexpired(self, backend: Backend) -> None:
        """``include_unexpired`` returns every in-flight entry, in buffer order."""
        await backend.buffer.push(["a", "b", "c"])
        await backend.buffer.claim(2, LONG_LEASE)
        assert await backend.buffer.recover() == 0
        assert await backend.buffer.recover(include_unexpired=True) == 2
        assert (await backend.buffer.stats()).in_flight == 0
        assert await self.drain(backend) == ["a", "b", "c"]

    async def test_buffer_recover_puts_entries_ahead_of_waiting_ones(
        self, backend: Backend
    ) -> None:
        """Recovered entries go back in buffer order, ahead of every waiting entry."""
        await backend.buffer.push(["a", "b", "c", "d"])
        await backend.buffer.claim(1, 2 * self.tick)
        await backend.buffer.claim(1, self.tick)
        await self.advance(self.tick)
        recovered = 0

        async def back(expected: int) -> bool:
            nonlocal recovered
            recovered += await backend.buffer.recover()
            return recovered >= expected

        await self.eventually(lambda: back(1), "the 1-tick lease is recoverable after 1 tick")
        await self.advance(self.tick)
        await self.eventually(lambda: back(2), "the 2-tick lease is recoverable after 2 ticks")
        assert recovered == 2
        assert await self.drain(backend) == ["a", "b", "c", "d"]

    async def test_buffer_recover_of_a_batch_keeps_its_order(self, backend: Backend) -> None:
        """Entries recovered together keep their buffer order."""
        await backend.buffer.push(["a", "b", "c", "d"])
        await backend.buffer.claim(3, self.tick)
        await self.advance(self.tick)
        recovered = 0

        async def all_back() -> bool:
            nonlocal recovered
            recovered += await backend.buffer.recover()
            return recovered >= 3

        await self.eventually(all_back, "1-tick leases are recoverable after 1 tick")
        assert await self.drain(backend) == ["a", "b", "c", "d"]

    async def test_buffer_stats_counts(self, backend: Backend) -> None:
        """Stats count waiting, in-flight and dead-lettered entries."""
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.dead_letters, stats.held_until) == (
            0,
            0,
            0,
            None,
        )
        await backend.buffer.push(["a", "b", "c", "d"])
        first, second, _ = await backend.buffer.claim(3, LONG_LEASE)
        await backend.buffer.ack([first.receipt])
        await backend.buffer.dead_letter(second.receipt, "boom", "tx-b")
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.in_flight, stats.dead_letters, stats.held_until) == (
            1,
            1,
            1,
            None,
        )
