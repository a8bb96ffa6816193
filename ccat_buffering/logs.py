"""Logging through the standard library, with the site and transaction on every record.

Every record from a ``ccat_buffering`` logger carries ``site`` and
``transaction_id`` attributes (``-`` where they do not apply), so a handler
can filter or format on them, and passwords in URLs are masked in its
message whatever produced it.

Where the lines go is the ``log_handler`` setting (see :func:`configure`):
a host that configured the root logger gets the records through its own
handlers; otherwise (a bare script, or uvicorn, which configures only its
own loggers) the library writes each line itself to standard error, with
time, level, site and transaction, as text (:data:`FORMAT`) or JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Literal, TextIO

from ccat_buffering.masking import mask_text

__all__ = ["FORMAT", "ContextFilter", "JsonFormatter", "SiteLogger", "configure", "install"]

FORMAT = "%(asctime)s %(levelname)s %(name)s [site=%(site)s tx=%(transaction_id)s] %(message)s"
"""A format that shows both attributes."""

ROOT = "ccat_buffering"
ROOTS = (ROOT, "ccat_buffering_redis", "ccat_buffering_memory")
"""The library's loggers: the core's and the first-party backends'."""


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line.

    The keys: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``site``,
    ``tx``, ``message`` and, with an exception, ``error``.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "site": getattr(record, "site", "-"),
            "tx": getattr(record, "transaction_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class _LibraryHandler(logging.StreamHandler[TextIO]):
    """The library's own handler, on standard error.

    The stream is looked up when each line is written: a test runner or a CLI
    runner may have replaced ``sys.stderr`` since.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def install() -> None:
    """Attach the filter to the library's loggers (idempotent)."""
    for name in ROOTS:
        root = logging.getLogger(name)
        if not any(isinstance(f, ContextFilter) for f in root.filters):
            root.addFilter(ContextFilter())
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())


def configure(
    handler: Literal["auto", "library", "host"] = "auto",
    fmt: Literal["text", "json"] = "text",
    level: str | None = None,
) -> bool:
    """Send the library's records where the settings say (``log_*``); idempotent.

    Args:
        handler: ``library``: the library's own handler on standard error,
            records not passed on to the host's (so the host's configuration
            cannot strip time, level, site or transaction from a line);
            ``host``: the host's handlers; ``auto``: ``host`` when the root
            logger has a handler, else ``library``.
        fmt: The library handler's format: ``text`` (:data:`FORMAT`) or ``json``.
        level: The library loggers' level; ``None`` leaves it as it is.

    Returns:
        Whether the library's own handler writes the lines.
    """
    install()
    own = handler == "library" or (handler == "auto" and not logging.getLogger().handlers)
    for name in ROOTS:
        root = logging.getLogger(name)
        for old in [h for h in root.handlers if isinstance(h, _LibraryHandler)]:
            root.removeHandler(old)
        if own:
            new = _LibraryHandler()
            new.addFilter(ContextFilter())
            new.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT))
            root.addHandler(new)
        root.propagate = not own
        if level is not None:
            root.setLevel(level)
    return own


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
