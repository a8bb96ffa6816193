"""The command's root: its sub-applications register themselves on it."""

from __future__ import annotations

import typer

__all__ = ["app", "db_app", "dlq_app", "keys_app"]

app = typer.Typer(
    name="ccat-buffering",
    help="Buffer a remote site's writes and drain them into the main database.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The main database's side of buffering.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: list, show, replay, purge.", no_args_is_help=True)
keys_app = typer.Typer(help="The backend's keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(dlq_app, name="dlq")
app.add_typer(keys_app, name="keys")


@app.callback()
def _root() -> None:
    """Buffer a remote site's writes and drain them into the main database."""
