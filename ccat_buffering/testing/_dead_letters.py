"""The contract of :class:`~ccat_buffering.buffer.protocols.DeadLetterStore`."""

from __future__ import annotations

from ccat_buffering.buffer.protocols import Backend
from ccat_buffering.testing._base import LONG_LEASE, ContractHooks

__all__ = ["DeadLetterStoreContract"]


class DeadLetterStoreContract(ContractHooks):
    """Dead letters: list, get, replay and purge."""

    @staticmethod
    async def dead_letter_three(backend: Backend) -> None:
        """Buffer ``p1``, ``p2``, ``p3`` and dead-letter them as ``t3``, ``t1``, ``t2``.

        The letters arrive in an order other than the buffer's, so that a test
        can tell arrival order from buffer order.
        """
        await backend.buffer.push(["p1", "p2", "p3"])
        c1, c2, c3 = await backend.buffer.claim(3, LONG_LEASE)
        assert await backend.buffer.dead_letter(c3.receipt, "reason 3", "t3")
        assert await backend.buffer.dead_letter(c1.receipt, "reason 1", "t1")
        assert await backend.buffer.dead_letter(c2.receipt, "reason 2", "t2")

    @staticmethod
    async def letter_ids(backend: Backend, offset: int = 0, limit: int | None = None) -> list[str]:
        """The ids of the listed letters, in order."""
        letters = await backend.dead_letters.list(offset, limit)
        return [letter.letter_id for letter in letters]

    async def test_dead_letters_empty(self, backend: Backend) -> None:
        """A new site has no letters; an unknown id has none."""
        assert await backend.dead_letters.list() == []
        assert await backend.dead_letters.get("t1") is None

    async def test_dead_letters_list_in_arrival_order(self, backend: Backend) -> None:
        """Letters are listed in the order they arrived, not the buffer's."""
        await self.dead_letter_three(backend)
        assert await self.letter_ids(backend) == ["t3", "t1", "t2"]

    async def test_dead_letters_list_offset_and_limit(self, backend: Backend) -> None:
        """``offset`` skips letters and ``limit`` caps how many come."""
        await self.dead_letter_three(backend)
        assert await self.letter_ids(backend, offset=1) == ["t1", "t2"]
        assert await self.letter_ids(backend, limit=2) == ["t3", "t1"]
        assert await self.letter_ids(backend, offset=1, limit=1) == ["t1"]
        assert await self.letter_ids(backend, offset=5) == []
        assert await self.letter_ids(backend, limit=0) == []

    async def test_dead_letters_get(self, backend: Backend) -> None:
        """``get`` returns the letter with its payload and reason, or ``None``."""
        await self.dead_letter_three(backend)
        letter = await backend.dead_letters.get("t1")
        assert letter is not None
        assert (letter.letter_id, letter.payload, letter.reason, letter.transaction_id) == (
            "t1",
            "p1",
            "reason 1",
            "t1",
        )
        assert await backend.dead_letters.get("t9") is None

    async def test_dead_letters_replay_moves_to_head_in_arrival_order(
        self, backend: Backend
    ) -> None:
        """Replay puts letters at the head in arrival order, whatever the order of the ids."""
        await self.dead_letter_three(backend)
        await backend.buffer.push(["waiting"])
        before = await backend.dead_letters.get("t3"), await backend.dead_letters.get("t2")
        replayed = await backend.dead_letters.replay(["t2", "unknown", "t3"])
        assert tuple(replayed) == before
        assert await self.letter_ids(backend) == ["t1"]
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.dead_letters) == (3, 1)
        assert await self.drain(backend) == ["p3", "p2", "waiting"]

    async def test_dead_letters_replay_all(self, backend: Backend) -> None:
        """Replay of ``None`` moves every letter back, in arrival order, ahead of the queue."""
        await self.dead_letter_three(backend)
        await backend.buffer.push(["waiting"])
        replayed = await backend.dead_letters.replay()
        assert [letter.letter_id for letter in replayed] == ["t3", "t1", "t2"]
        assert await backend.dead_letters.list() == []
        assert await self.drain(backend) == ["p3", "p1", "p2", "waiting"]

    async def test_dead_letters_replay_ignores_unknown_ids(self, backend: Backend) -> None:
        """Unknown ids replay nothing."""
        await self.dead_letter_three(backend)
        assert await backend.dead_letters.replay(["unknown"]) == []
        assert await backend.dead_letters.replay([]) == []
        assert len(await backend.dead_letters.list()) == 3
        assert (await backend.buffer.stats()).depth == 0

    async def test_dead_letters_purge_some(self, backend: Backend) -> None:
        """Purging ids deletes those letters, counts them, and leaves the buffer alone."""
        await self.dead_letter_three(backend)
        assert await backend.dead_letters.purge(["t1", "unknown"]) == 1
        assert await self.letter_ids(backend) == ["t3", "t2"]
        assert await backend.dead_letters.get("t1") is None
        assert await backend.dead_letters.purge(["t1"]) == 0
        stats = await backend.buffer.stats()
        assert (stats.depth, stats.dead_letters) == (0, 2)

    async def test_dead_letters_purge_all(self, backend: Backend) -> None:
        """Purging ``None`` deletes every letter."""
        await self.dead_letter_three(backend)
        assert await backend.dead_letters.purge() == 3
        assert await backend.dead_letters.list() == []
        assert (await backend.buffer.stats()).dead_letters == 0
        assert await backend.dead_letters.purge() == 0
