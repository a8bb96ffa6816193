"""The counts of a site's buffer, as every report shows them.

:class:`~ccat_buffering.buffer.protocols.BufferStats` is what a store returns;
the health report of the site and the processor's own report carry the same
counts under the same names, from here (a test checks the store's names
against these).
"""

from __future__ import annotations

from pydantic import BaseModel

from ccat_buffering.buffer.protocols import BufferStats

__all__ = ["BufferCounts"]


class BufferCounts(BaseModel):
    """How many transactions wait, are in flight, and are dead-lettered.

    Attributes:
        depth: Transactions waiting to be claimed.
        in_flight: Transactions claimed and not yet settled.
        dead_letters: Transactions in the dead-letter store.
    """

    depth: int = 0
    in_flight: int = 0
    dead_letters: int = 0

    @staticmethod
    def of(stats: BufferStats) -> dict[str, int]:
        """The counts of a store's stats, as keyword arguments of a report.

        Args:
            stats: What the buffer store returned.

        Returns:
            ``depth``, ``in_flight`` and ``dead_letters``.
        """
        return {name: getattr(stats, name) for name in BufferCounts.model_fields}
