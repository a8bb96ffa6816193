"""Logging through the standard library, with the site and transaction on every record.

Every record from a ``ccat_buffering`` logger carries ``site`` and
``transaction_id`` attributes (``-`` where they do not apply), so a handler
can filter or format on them, and passwords in URLs are masked in its
message whatever produced it.
"""

from __future__ import annotations

import logging
from typing import Any

from ccat_buffering.masking import mask_text

__all__ = ["FORMAT", "ContextFilter", "SiteLogger", "install"]

FORMAT = "%(asctime)s %(levelname)s %(name)s [site=%(site)s tx=%(transaction_id)s] %(message)s"
"""A format that shows both attributes."""


_FORMATTER = logging.Formatter()


class ContextFilter(logging.Filter):
    """Gives every record ``site`` and ``transaction_id``, and masks passwords in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Complete and mask ``record``; never drops one."""
        if not hasattr(record, "site"):
            record.site = "-"
        if not hasattr(record, "transaction_id"):
            record.transaction_id = "-"
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            # A driver's exception text may hold a DSN: format it here, masked;
            # the handler's formatter uses exc_text as it is.
            record.exc_text = mask_text(_FORMATTER.formatException(record.exc_info))
        return True


def install() -> None:
    """Attach the filter to the library's root logger (idempotent)."""
    root = logging.getLogger("ccat_buffering")
    if not any(isinstance(f, ContextFilter) for f in root.filters):
        root.addFilter(ContextFilter())
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())


class SiteLogger:
    """A logger bound to one site.

    Args:
        name: The logger's name (a module's ``__name__``).
        site: The site's name.
    """

    def __init__(self, name: str, site: str) -> None:
        install()
        self.logger = logging.getLogger(name)
        self.site = site

    def log(self, level: int, message: str, *args: Any, transaction_id: str | None = None) -> None:
        """Log ``message % args`` with the site and, if given, the transaction."""
        extra = {"site": self.site, "transaction_id": transaction_id or "-"}
        self.logger.log(level, message, *args, extra=extra)

    def info(self, message: str, *args: Any, transaction_id: str | None = None) -> None:
        """Log at INFO."""
        self.log(logging.INFO, message, *args, transaction_id=transaction_id)

    def warning(self, message: str, *args: Any, transaction_id: str | None = None) -> None:
        """Log at WARNING."""
        self.log(logging.WARNING, message, *args, transaction_id=transaction_id)

    def error(self, message: str, *args: Any, transaction_id: str | None = None) -> None:
        """Log at ERROR."""
        self.log(logging.ERROR, message, *args, transaction_id=transaction_id)
