"""Optional compression of queue entries, for sites that must buffer through long outages.

With ``compression="zlib"`` (or ``?compression=zlib`` on the backend URL) each
entry pushed to the queue is stored as :data:`MARKER` followed by the zlib
stream of its UTF-8 text. An entry keeps that form while it waits, while it is
in flight and while it is a dead letter; every reader of the backend turns it
back into text with :func:`entry_text`, so the manager, the processor and the
operator's commands never see the difference. Entries stored without
compression (before it was turned on, by another client, by hand) are read as
they are, so the setting can be turned on or off at any time.

Statuses and cached records are not compressed: the scripts merge records
field by field, and Lua in Redis has no zlib; they are also too short for zlib
to gain much (see ``docs/redis.rst``).
"""

from __future__ import annotations

import zlib

from ccat_buffering.errors import ConfigurationError

__all__ = ["COMPRESSIONS", "MARKER", "check_compression", "entry_bytes", "entry_text"]

MARKER = b"\xffZ"
"""Starts a compressed entry. No UTF-8 text starts with the byte 0xFF."""

COMPRESSIONS = ("zlib",)
"""The compressions a backend can be given (``None`` for none)."""

LEVEL = 1
"""zlib's fastest level: on a 700-byte transaction it stores about 10 bytes more than level 6."""


def check_compression(compression: str | None) -> str | None:
    """Return ``compression`` if it names a known compression (or is ``None``).

    Raises:
        ConfigurationError: Naming the value and the known ones.
    """
    if compression is not None and compression not in COMPRESSIONS:
        known = ", ".join(COMPRESSIONS)
        raise ConfigurationError(
            f"unknown compression {compression!r}: use one of {known}, or none"
        )
    return compression


def entry_bytes(payload: str, compression: str | None) -> str | bytes:
    """What to store for a queue entry: the text itself, or its compressed form."""
    if compression is None:
        return payload
    return MARKER + zlib.compress(payload.encode(), LEVEL)


def entry_text(raw: bytes | str) -> str:
    """A stored queue entry as text, decompressed if it was compressed.

    An entry that starts with :data:`MARKER` but does not decompress (bytes an
    operator wrote by hand, say) is read as it is, so that it is dead-lettered
    as unreadable rather than stopping the reader.
    """
    if isinstance(raw, str):
        return raw
    if raw.startswith(MARKER):
        try:
            return zlib.decompress(raw[len(MARKER) :]).decode()
        except (zlib.error, UnicodeDecodeError):
            pass
    return raw.decode("utf-8", "replace")
