"""Passwords out of what is shown: URLs and free text for logs, status and errors."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["mask_text", "mask_url"]


def mask_url(url: str | None) -> str | None:
    """Hide the password in a URL, for logs, status output and error messages.

    Args:
        url: A backend or database URL.

    Returns:
        The URL with any password replaced by ``***``.
    """
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


_CREDENTIALS = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^\s:/@]*:)[^\s@/]+@")


def mask_text(text: str) -> str:
    """Hide every URL password inside free text (an error message, a log line).

    Args:
        text: Any text.

    Returns:
        The text with ``scheme://user:password@`` shown as ``scheme://user:***@``.
    """
    return _CREDENTIALS.sub(r"\1***@", text)
