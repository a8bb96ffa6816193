"""Names that may become part of a store key: sites, models, fields, steps."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from ccat_buffering.errors import TransactionValidationError

__all__ = ["Identifier", "check_identifier", "known_identifier"]

_IDENTIFIER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,-]{0,127}")


def check_identifier(value: str, what: str = "name") -> str:
    """Return ``value`` if it is safe as a part of a store key.

    Args:
        value: A site, model, step or record name.
        what: What the value names, for the message.

    Returns:
        The value, unchanged.

    Raises:
        TransactionValidationError: The value is empty, longer than 128
            characters, or holds a character other than letters, digits, ``_``,
            ``.``, ``,`` and ``-`` (no ``:``, ``*``, braces, spaces or control
            characters, which would let it escape the key schema).
    """
    if not isinstance(value, str) or _IDENTIFIER.fullmatch(value) is None:
        raise TransactionValidationError(
            f"{what} {value!r} is not a plain identifier: use 1 to 128 letters, digits, "
            "'_', '.', ',' or '-', starting with a letter, digit or '_'"
        )
    return value


_KNOWN_IDENTIFIERS: set[str] = set()
"""Identifiers already checked: model, field and step names recur in every transaction."""
_KNOWN_LIMIT = 4096


def known_identifier(value: str) -> str:
    """Check ``value`` as pydantic validators do, remembering the names already seen.

    Args:
        value: A model, field or step name.

    Returns:
        The value, unchanged.

    Raises:
        ValueError: It is not a plain identifier (see :func:`check_identifier`).
    """
    if type(value) is str and value in _KNOWN_IDENTIFIERS:
        return value
    try:
        check_identifier(value)
    except TransactionValidationError as exc:
        # pydantic reports a ValueError with the field's location attached.
        raise ValueError(str(exc)) from None
    if len(_KNOWN_IDENTIFIERS) < _KNOWN_LIMIT:
        _KNOWN_IDENTIFIERS.add(value)
    return value


Identifier = Annotated[str, AfterValidator(known_identifier)]
"""A string that may become part of a store key."""
