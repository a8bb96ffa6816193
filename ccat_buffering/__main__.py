"""``python -m ccat_buffering``: the same as the ``ccat-buffering`` command."""

from ccat_buffering.cli import main

main()
