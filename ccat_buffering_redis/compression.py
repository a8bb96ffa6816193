"""Optional compression of queue entries, for sites that must buffer through long outages.

With ``compression="zlib"`` (or ``?compression=zlib`` on the backend URL) each
entry pushed to the queue is stored as :data:`MARKER` followed by the zlib
stream of its UTF-8 text, compressed with :data:`DICTIONARY` as zlib's preset
dictionary: the names every transaction's JSON repeats, which a 700-byte text
is too short for zlib to learn (about 90 bytes less an entry). Entries stored
as :data:`PLAIN_MARKER` and a zlib stream without a dictionary are read too.
An entry keeps that form while it waits, while it is in flight and while it
is a dead letter; every reader of the backend turns it back into text with
:func:`entry_text`, so the manager, the processor and the operator's commands
never see the difference. Entries stored without
compression (before it was turned on, by another client, by hand) are read as
they are, so the setting can be turned on or off at any time.

Statuses and cached records are not compressed: the scripts merge records
field by field, and Lua in Redis has no zlib; they are also too short for zlib
to gain much (see ``docs/redis.rst``).
"""

from __future__ import annotations

import zlib

from ccat_buffering.errors import ConfigurationError

__all__ = [
    "COMPRESSIONS",
    "DICTIONARY",
    "MARKER",
    "PLAIN_MARKER",
    "check_compression",
    "entry_bytes",
    "entry_text",
]

MARKER = b"\xffD"
"""Starts an entry compressed with :data:`DICTIONARY`. No UTF-8 text starts with the byte 0xFF."""

PLAIN_MARKER = b"\xffZ"
"""Starts an entry compressed without a dictionary (read only)."""

DICTIONARY = (
    b'{"$decimal":"{"$date":"{"$uuid":"+00:00"},"operation":"update","operation":"delete",'
    b'"key_fields":["id"]},{"step_id":"s1","operation":"create","model":"","data":{"id":"'
    b'{"format_version":1,"transaction_id":"","endpoint":"","steps":[{"step_id":"s0",'
    b'"operation":"create","model":"","data":{"$datetime":"+00:00"},"id":"'
    b'"},"key_fields":["id"]}],"created_at":"'
)
"""zlib's preset dictionary for queue entries: part of the stored format, never to change."""

COMPRESSIONS = ("zlib",)
"""The compressions a backend can be given (``None`` for none)."""

LEVEL = 6
"""zlib's default level: with the dictionary, about 10 bytes less an entry than level 1, in
the same time (setting the dictionary up costs more than the compression)."""


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
    packer = zlib.compressobj(LEVEL, zdict=DICTIONARY)
    return MARKER + packer.compress(payload.encode()) + packer.flush()


def entry_text(raw: bytes | str) -> str:
    """A stored queue entry as text, decompressed if it was compressed.

    An entry that starts with :data:`MARKER` but does not decompress (bytes an
    operator wrote by hand, say) is read as it is, so that it is dead-lettered
    as unreadable rather than stopping the reader.
    """
    if isinstance(raw, str):
        return raw
    if raw.startswith((MARKER, PLAIN_MARKER)):
        try:
            if raw.startswith(PLAIN_MARKER):
                return zlib.decompress(raw[len(PLAIN_MARKER) :]).decode()
            unpacker = zlib.decompressobj(zdict=DICTIONARY)
            text = unpacker.decompress(raw[len(MARKER) :]) + unpacker.flush()
            if unpacker.eof:  # else a stream cut short
                return text.decode()
        except (zlib.error, UnicodeDecodeError):
            pass
    return raw.decode("utf-8", "replace")
