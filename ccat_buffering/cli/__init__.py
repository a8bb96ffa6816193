"""The ``ccat-buffering`` command: simulate, run a worker, and see and fix a site."""

from __future__ import annotations

import sys

from ccat_buffering.cli import audit as _audit  # noqa: F401 (registers its commands)
from ccat_buffering.cli import conflicts as _conflicts  # noqa: F401
from ccat_buffering.cli import console as _console  # noqa: F401
from ccat_buffering.cli import db as _db  # noqa: F401
from ccat_buffering.cli import dlq as _dlq  # noqa: F401
from ccat_buffering.cli import keys as _keys  # noqa: F401
from ccat_buffering.cli import pause as _pause  # noqa: F401
from ccat_buffering.cli import site as _site  # noqa: F401
from ccat_buffering.cli import status as _status  # noqa: F401
from ccat_buffering.cli._app import app
from ccat_buffering.cli._common import exit_code
from ccat_buffering.errors import BufferingError
from ccat_buffering.masking import mask_text

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``ccat-buffering`` command.

    Every command turns the library's errors into one line and an exit code
    (see :mod:`ccat_buffering.cli._common`); this catches any that escape
    one (raised while the command line is parsed), with the same codes.
    """
    try:
        app()
    except BufferingError as exc:
        print(f"ccat-buffering: {mask_text(str(exc))}", file=sys.stderr)
        raise SystemExit(exit_code(exc)) from None
