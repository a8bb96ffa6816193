"""The dead letters of one site in Redis: by id, in arrival order, and a page from a cursor.

A view of its :class:`~ccat_buffering_redis.backend.RedisBackend`, as the
stores of :mod:`ccat_buffering_redis.stores` are: reads through
``LETTERS_GET`` and ``LETTERS_PAGE``, replays and purges through their scripts.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Sequence
from typing import Any

from ccat_buffering import checks
from ccat_buffering.protocols import DeadLetter
from ccat_buffering_redis._values import as_text
from ccat_buffering_redis.compression import entry_text
from ccat_buffering_redis.stores import _SiteStore

__all__ = ["RedisDeadLetterStore"]


def _read_letters(rows: Sequence[Any]) -> list[DeadLetter]:
    letters = []
    for lid, payload, meta in rows:
        info = json.loads(meta)
        letters.append(
            DeadLetter(
                as_text(lid),
                entry_text(payload),
                info["reason"],
                info["at"] / 1000,
                info["tx"] or None,
            )
        )
    return letters


class RedisDeadLetterStore(_SiteStore):
    """:class:`~ccat_buffering.protocols.DeadLetterStore` in Redis."""

    async def _letters(self, ids: list[str]) -> list[DeadLetter]:
        if not ids:
            return []
        return _read_letters(await self._backend.script("letters_get", *ids))

    async def letters_after(
        self, after: str | None, limit: int
    ) -> tuple[builtins.list[DeadLetter], str | None]:
        """See :meth:`ccat_buffering.protocols.SupportsLetterPaging.letters_after`."""
        if after is not None and not after.isdigit():
            raise ValueError(
                f"{after!r} is not a cursor this store gave: start from the first page"
            )
        if limit <= 0:
            return [], None
        following, *rows = await self._backend.script("letters_page", after or "", limit)
        return _read_letters(rows), as_text(following) or None

    async def list(self, offset: int = 0, limit: int | None = None) -> list[DeadLetter]:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.list`."""
        stop = -1 if limit is None else offset + limit - 1
        if limit == 0:
            return []
        with self._backend.translate():
            raw = await self._backend.client.zrange(self._keys.letter_order, offset, stop)
        return await self._letters([as_text(r) for r in raw])  # type: ignore[arg-type]

    async def get(self, letter_id: str) -> DeadLetter | None:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.get`."""
        found = await self._letters([letter_id])
        return found[0] if found else None

    async def replay(self, letter_ids: Sequence[str] | None = None) -> builtins.list[DeadLetter]:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.replay`."""
        letter_ids = checks.check_letter_ids(letter_ids)
        selector = "*" if letter_ids is None else json.dumps(letter_ids)
        wanted = await self.list() if letter_ids is None else await self._letters(list(letter_ids))
        by_id = {letter.letter_id: letter for letter in wanted}
        done = await self._backend.script("letters_replay", selector)
        return [by_id[as_text(lid)] for lid in done if as_text(lid) in by_id]

    async def purge(self, letter_ids: Sequence[str] | None = None) -> int:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.purge`."""
        letter_ids = checks.check_letter_ids(letter_ids)
        selector = "*" if letter_ids is None else json.dumps(letter_ids)
        return int(await self._backend.script("letters_purge", selector))
