"""The command's root: its sub-applications register themselves on it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from ccat_buffering.cli import _common as common

__all__ = ["app", "conflicts_app", "db_app", "dlq_app", "keys_app"]

# Plain click help (rich_markup_mode=None): flags show as flags (``--json``, not
# ``--json <bool>``), and the help reads the same in a pipe as on a terminal.
app = typer.Typer(
    name="ccat-buffering",
    help="Buffer a remote site's writes and drain them into the main database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(
    help="The main database's side of buffering.", no_args_is_help=True, rich_markup_mode=None
)
dlq_app = typer.Typer(
    help="Dead letters: list, show, replay, purge.", no_args_is_help=True, rich_markup_mode=None
)
keys_app = typer.Typer(help="The backend's keys.", no_args_is_help=True, rich_markup_mode=None)
conflicts_app = typer.Typer(
    help="Conflicts between writers: list, show, resolve.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(db_app, name="db")
app.add_typer(dlq_app, name="dlq")
app.add_typer(keys_app, name="keys")
app.add_typer(conflicts_app, name="conflicts")


def _version(value: bool) -> None:
    if value:
        try:
            print(f"ccat-buffering {version('ccat-buffering')}")
        except PackageNotFoundError:  # pragma: no cover (running from a source tree)
            print("ccat-buffering (not installed)")
        raise typer.Exit(0)


@app.callback()
def _root(
    site: common.SiteOption = None,
    backend_url: common.BackendOption = None,
    database_url: common.DatabaseOption = None,
    replica_url: common.ReplicaOption = None,
    config: common.ConfigOption = None,
    verbose: common.VerboseOption = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Buffer a remote site's writes and drain them into the main database.

    Exit status: 0 ok; 1 needs attention (warnings, dead letters, not found);
    2 usage or configuration error; 3 a service (Redis, the database) cannot
    be reached. The site options may also follow the sub-command.
    """
    common.remember_root_options(
        common.Options(
            site=site,
            backend_url=backend_url,
            database_url=database_url,
            replica_url=replica_url,
            config=config,
            verbose=verbose,
        )
    )
