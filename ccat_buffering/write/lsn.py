"""PostgreSQL log sequence numbers, compared as the 64-bit integers they are.

PostgreSQL prints an LSN as two hexadecimal halves, ``16/B374D848``. Compared
as strings, ``0/9`` would sort after ``0/10`` and ``F/FFFFFFFF`` after
``10/0``; :class:`LSN` parses them into integers so that neither can happen.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator

__all__ = ["LSN", "LSNField"]

_TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


class LSN(int):
    """A WAL position: an ``int`` that prints as PostgreSQL does."""

    def __new__(cls, value: int | str) -> LSN:  # noqa: D102 (documented on the class)
        if isinstance(value, str):
            return cls.parse(value)
        if not 0 <= int(value) < 2**64:
            raise ValueError(f"LSN {value!r} is outside 0 .. 2**64-1")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> LSN:
        """Parse PostgreSQL's ``X/Y`` form.

        Args:
            text: For example ``"16/B374D848"``.

        Returns:
            The LSN.

        Raises:
            ValueError: The text is not in ``X/Y`` hexadecimal form.
        """
        match = _TEXT.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not an LSN of the form 'X/Y' in hexadecimal")
        high, low = (int(part, 16) for part in match.groups())
        return int.__new__(cls, (high << 32) | low)

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"LSN('{self}')"


def _lsn(value: Any) -> LSN:
    if isinstance(value, LSN):
        return value
    if isinstance(value, int | str):
        return LSN(value)
    raise ValueError(f"{value!r} is not an LSN")


LSNField = Annotated[LSN, PlainValidator(_lsn), PlainSerializer(str, return_type=str)]
"""An LSN in a pydantic model: accepts ``X/Y`` text or an int, serialises as text."""
