"""The ``ccat-buffering`` command: simulate, run a worker, and see and fix a site."""

from __future__ import annotations

from ccat_buffering.cli import dlq as _dlq  # noqa: F401 (registers its commands)
from ccat_buffering.cli import site as _site  # noqa: F401
from ccat_buffering.cli import status as _status  # noqa: F401
from ccat_buffering.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``ccat-buffering`` command."""
    app()
