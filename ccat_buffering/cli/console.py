"""The web console: ``console`` serves it (loopback by default)."""

from __future__ import annotations

from typing import Annotated

import typer

from ccat_buffering.cli._app import app
from ccat_buffering.cli._common import command, console, registry_for, settings_for

__all__: list[str] = []


@command(app, "console")
def console_command(
    host: Annotated[
        str, typer.Option(help="Address to listen on; loopback unless you mean otherwise.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8470,
    models: Annotated[
        str | None,
        typer.Option("--models", help="The mapped classes (package.module:Base), for dry runs."),
    ] = None,
    sites: Annotated[
        str,
        typer.Option(
            "--sites",
            help="More sites on the same backend (comma-separated), each served at "
            "/console/sites/<name>, every one at a glance at /console/sites.",
            metavar="NAME,NAME",
        ),
    ] = "",
) -> None:
    """Serve the web console of the site until Ctrl-C (needs the `console` extra).

    Read-only unless CCAT_BUFFERING_CONSOLE_CREDENTIAL is set (HTTP Basic
    password); every action is written to the audit log.
    """
    import uvicorn

    from ccat_buffering.console.app import create_app

    settings = settings_for(models)
    registry = registry_for(settings, required=False) if settings.models else None
    if host not in ("127.0.0.1", "::1", "localhost") and settings.console_credential is None:
        console(stderr=True).print(
            f"[yellow]serving on {host} without an operator credential: read-only[/yellow]"
        )
    access = "operators may act" if settings.console_credential else "read-only"
    console(stderr=True).print(
        f"console of site {settings.site_name}: http://{host}:{port}/console ({access})"
    )
    others = [name.strip() for name in sites.split(",") if name.strip()]
    if others:
        console(stderr=True).print(f"every site: http://{host}:{port}/console/sites")
    uvicorn.run(
        create_app(settings, registry, sites=others), host=host, port=port, log_level="warning"
    )
