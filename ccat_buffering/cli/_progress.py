"""Progress of a key audit on a terminal: a bar on stderr, nothing in a pipe."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ccat_buffering.buffer.protocols import AuditProgress

__all__ = ["audit_progress"]


@contextmanager
def audit_progress(label: str = "auditing keys") -> Iterator[AuditProgress | None]:
    """A callback that draws the audit's progress on stderr, or ``None`` off a terminal.

    On stderr so that stdout (a table, ``--json``) stays what it was; gone
    when the audit ends.
    """
    err = Console(stderr=True)
    if not err.is_terminal:
        yield None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def tell(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield tell
