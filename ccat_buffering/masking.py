"""Secrets out of what is shown: the one place that hides them.

Every output surface (logs, errors, ``status``, health, metrics, the worker's
start line, dead-letter reasons, the settings' ``repr``) goes through these
functions. They over-mask rather than under-mask: a password is hidden in

* a URL's user-info, in every form the docs show (``redis://:pw@host``,
  ``redis+sentinel://user:pw@h1:26379,h2:26379/mymaster``,
  ``redis+cluster://:pw@h1:7000,h2:7001``), also when it is not
  percent-encoded and holds ``@``, ``:``, ``/``, ``?`` or ``#``;
* a query parameter that carries one (``?password=``, ``sslpassword=``,
  ``sentinel_password=``: any name ending in one of :data:`SECRET_NAMES`),
  which both redis-py and libpq accept;
* free text: ``password=...`` (a libpq key/value string), ``'password': '...'``
  (a ``repr`` of keyword arguments).

None of them parses a URL strictly, so none raises on one that does not parse.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASK", "SECRET_NAMES", "mask_mapping", "mask_text", "mask_url"]

MASK = "***"
"""What a secret is replaced by."""

SECRET_NAMES = ("password", "passwd", "pwd", "sslpassword", "secret", "token", "auth")
"""Parameter and keyword names whose values are secrets (case-insensitive)."""

_NAMES = "|".join(SECRET_NAMES)
# A parameter whose name ends in one of them counts too (sentinel_password=).
_QUERY_SECRET = re.compile(rf"([?&;][\w.-]*?(?:{_NAMES})=)[^&#;\s]*", re.IGNORECASE)
_SCHEME = re.compile(r"[a-zA-Z][\w+.-]*://")
_KEYWORD_SECRET = re.compile(rf"(\b(?:{_NAMES})\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s,;&)]+)", re.I)
_REPR_SECRET = re.compile(rf"""(['"](?:{_NAMES})['"]\s*:\s*)('[^']*'|"[^"]*"|[^\s,}})]+)""", re.I)


def _userinfo_end(rest: str) -> int:
    """Where the user-info of ``rest`` (a URL after ``scheme://``) ends: its last ``@``.

    The last ``@`` ends it, since an unencoded password may hold ``@`` too;
    an ``@`` inside the query (after a ``?`` and a ``=``: ``?client_name=a@b``)
    does not count. ``-1``: no user-info.
    """
    at = rest.rfind("@")
    while at >= 0:
        question = rest.find("?", 0, at)
        if question < 0 or "=" not in rest[question:at]:
            return at
        at = rest.rfind("@", 0, at)
    return -1


def mask_url(url: str | None) -> str | None:
    """Hide the passwords in a URL, for logs, status output and error messages.

    The user name and every host stay (``redis+sentinel://ops:***@h1:26379,h2:26379/m``);
    the password of the user-info and any secret query parameter become ``***``.
    It never raises, whatever the URL.

    Args:
        url: A backend or database URL, in any form.

    Returns:
        The URL with its passwords replaced by ``***``.
    """
    if url is None:
        return None
    match = _SCHEME.match(url)
    if match is None:
        return mask_text(url) if url else url
    head, rest = url[: match.end()], url[match.end() :]
    at = _userinfo_end(rest)
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        rest = f"{user}:{MASK}{rest[at:]}" if colon else rest
    return head + _QUERY_SECRET.sub(rf"\1{MASK}", rest)


def mask_text(text: str) -> str:
    """Hide every password inside free text (an error message, a log line, a repr).

    Each ``scheme://...`` in it is masked as :func:`mask_url` masks a URL
    (up to the next white space); ``password=...`` and ``'password': '...'``
    (and the other :data:`SECRET_NAMES`) anywhere become ``***`` too.

    Args:
        text: Any text.

    Returns:
        The text with its passwords hidden.
    """
    if not text:
        return text
    out: list[str] = []
    last = 0
    for match in _SCHEME.finditer(text):
        if match.start() < last:
            continue  # a scheme inside a URL already masked (e.g. in its query)
        end = match.end()
        while end < len(text) and not text[end].isspace():
            end += 1
        out.append(text[last : match.start()])
        out.append(mask_url(text[match.start() : end]) or "")
        last = end
    out.append(text[last:])
    masked = "".join(out)
    masked = _KEYWORD_SECRET.sub(rf"\1{MASK}", masked)
    return _REPR_SECRET.sub(rf"\1'{MASK}'", masked)


def mask_mapping(values: Any) -> Any:
    """A copy of keyword arguments (nested dicts and lists) with secrets hidden.

    Values under a :data:`SECRET_NAMES` key become ``***``; text is masked as
    :func:`mask_text` masks it. For showing engine or client options.

    Args:
        values: A mapping, list or scalar.

    Returns:
        The masked copy.
    """
    if isinstance(values, dict):
        return {
            key: MASK
            if isinstance(key, str) and key.lower() in SECRET_NAMES and values[key] is not None
            else mask_mapping(values[key])
            for key in values
        }
    if isinstance(values, list | tuple):
        return type(values)(mask_mapping(v) for v in values)
    if isinstance(values, str):
        return mask_text(values)
    return values
