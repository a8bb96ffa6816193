"""The limits of a buffered payload: one check, at submit and at the drain.

Nothing may be acknowledged that the drain cannot read. The drain reads a
payload with pydantic's JSON parser, which refuses a document nested deeper
than about 200 levels and an integer of more than 4,300 digits; the site's
``max_payload_bytes`` bounds its size. :func:`payload_problem` applies all of
them to the serialised text: :meth:`~ccat_buffering.write.models.Transaction.to_json`
calls it before anything is written (a clear error; nothing buffered), and
the drain calls it before parsing (a clear dead-letter reason for an entry
written by an older release or by hand). Text needs no check of its own here:
a lone surrogate, which UTF-8 cannot encode, is refused when the payload is
serialised.

The limits are below the parser's with a margin, so that a parser release
that moves its own limit a little changes nothing.
"""

from __future__ import annotations

import re

from ccat_buffering.errors import PayloadTooLargeError, TransactionValidationError

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "payload_problem"]

MAX_DEPTH = 128
"""Deepest nesting of objects and arrays in a whole payload (the parser's limit is 200).

A payload's own structure takes 4 levels (the transaction, its steps, a step,
its data), so a JSON column's value may nest 124 levels.
"""

MAX_INT_DIGITS = 4300
"""Most digits of an integer (the parser's limit, and Python's ``int_max_str_digits``)."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_LONG_INT = re.compile(rf"\d{{{MAX_INT_DIGITS + 1},}}")


def _depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON text whose strings were emptied."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def payload_problem(
    text: str, max_payload_bytes: int | None
) -> tuple[type[TransactionValidationError], str] | None:
    """What in a serialised payload the drain could not read, if anything.

    Args:
        text: The payload's JSON text.
        max_payload_bytes: The site's size limit; ``None`` for none.

    Returns:
        ``None`` when the drain can read it; otherwise the error class to
        raise (:class:`~ccat_buffering.errors.PayloadTooLargeError` for the
        size) and what is wrong, as ``is ...`` to follow the payload's name.
    """
    # A character is at most 4 bytes: encode only when the limit could be passed.
    if max_payload_bytes is not None and len(text) * 4 > max_payload_bytes:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_payload_bytes:
            return PayloadTooLargeError, f"is {size} bytes, over the limit of {max_payload_bytes}"
    brackets = text.count("[") + text.count("{")
    if brackets <= MAX_DEPTH and len(text) <= MAX_INT_DIGITS:
        return None  # too few to nest too deep, too short to hold a long number
    bare = _STRING.sub('""', text)
    if brackets > MAX_DEPTH:
        depth = _depth(re.sub(r"[^\[\]{}]+", "", bare))
        if depth > MAX_DEPTH:
            return TransactionValidationError, (
                f"is nested {depth} levels deep, over the limit of {MAX_DEPTH} (a JSON value "
                f"may nest {MAX_DEPTH - 4} levels): the drain could not read it; flatten the value"
            )
    long_int = _LONG_INT.search(bare)
    if long_int is not None:
        return TransactionValidationError, (
            f"holds an integer of {len(long_int.group())} digits, over the limit of "
            f"{MAX_INT_DIGITS}: the drain could not read it; store it as text or a Decimal"
        )
    return None
