"""What every command shares: global options, errors and exit codes, settings, progress.

Exit codes, the same for every command (``docs/operations.rst`` lists them):

* ``0``: done, nothing needs attention;
* ``1``: it needs attention: warnings, dead letters, a letter or transaction
  not found, leaked keys, a failed simulation;
* ``2``: a usage or configuration error (click's own usage errors are 2 too);
* ``3``: a service (the buffer, the database, the replica) cannot be reached.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar, get_type_hints

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from ccat_buffering.buffer.retry import FailureKind, classify_failure, describe_error
from ccat_buffering.config.settings import BufferingSettings, load_settings
from ccat_buffering.errors import (
    BackendUnavailableError,
    BufferingError,
    ConfigurationError,
    DatabaseUnavailableError,
    ReplicationError,
)
from ccat_buffering.logs import FORMAT, install
from ccat_buffering.masking import mask_text, mask_url
from ccat_buffering.write.registry import ModelRegistry

__all__ = [
    "EXIT_ATTENTION",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "Options",
    "command",
    "configure_logging",
    "console",
    "current",
    "database_error",
    "emit_json",
    "exit_code",
    "fail",
    "progress",
    "registry_for",
    "remember_root_options",
    "settings_for",
]

EXIT_OK, EXIT_ATTENTION, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

SiteOption = Annotated[
    str | None,
    typer.Option("--site", help="The site's name [env: CCAT_BUFFERING_SITE_NAME].", metavar="NAME"),
]
BackendOption = Annotated[
    str | None,
    typer.Option(help="The buffer [env: CCAT_BUFFERING_BACKEND_URL].", metavar="URL"),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(help="The main database [env: CCAT_BUFFERING_DATABASE_URL].", metavar="URL"),
]
ReplicaOption = Annotated[
    str | None,
    typer.Option(help="The site's replica [env: CCAT_BUFFERING_REPLICA_URL].", metavar="URL"),
]
ConfigOption = Annotated[
    str | None,
    typer.Option(help="A TOML file of settings [env: CCAT_BUFFERING_CONFIG_FILE].", metavar="FILE"),
]
VerboseOption = Annotated[
    bool,
    typer.Option("--verbose", "-v", "--debug", help="Log at INFO; show tracebacks of errors."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result (or error) as JSON.")]


@dataclasses.dataclass
class Options:
    """The options every command takes (before or after the sub-command)."""

    site: str | None = None
    backend_url: str | None = None
    database_url: str | None = None
    replica_url: str | None = None
    config: str | None = None
    verbose: bool = False
    as_json: bool = False

    def over(self, root: Options) -> Options:
        """These options, with the root's where these are not given."""
        return Options(
            **{
                field.name: getattr(self, field.name) or getattr(root, field.name)
                for field in dataclasses.fields(self)
            }
        )


_ROOT = Options()
_CURRENT = Options()


def remember_root_options(options: Options) -> None:
    """Keep the options given before the sub-command (called by the root callback)."""
    global _ROOT
    _ROOT = options


def current() -> Options:
    """The options of the command that runs now."""
    return _CURRENT


_PARAMETERS = {
    "site": SiteOption,
    "backend_url": BackendOption,
    "database_url": DatabaseOption,
    "replica_url": ReplicaOption,
    "config": ConfigOption,
    "verbose": VerboseOption,
    "as_json": JsonOption,
}

F = TypeVar("F", bound=Callable[..., Any])


def exit_code(exc: BaseException) -> int:
    """The exit code of an error: 3 unreachable, 2 configuration or usage, else 1."""
    if isinstance(exc, BackendUnavailableError | DatabaseUnavailableError | ReplicationError):
        return EXIT_UNREACHABLE
    if isinstance(exc, ConfigurationError | typer.BadParameter):
        return EXIT_USAGE
    return EXIT_ATTENTION


def fail(message: str, code: int, *, kind: str = "error") -> typer.Exit:
    """Report an error (one line, or JSON with ``--json``) and return the exit to raise.

    Args:
        message: What went wrong and what to do; passwords are masked here.
        code: The exit code.
        kind: A short name of the error, for JSON.

    Returns:
        The :class:`typer.Exit` to raise.
    """
    message = mask_text(message)
    if _CURRENT.as_json:
        print(json.dumps({"error": {"type": kind, "message": message, "exit_code": code}}))
    else:
        print(f"ccat-buffering: {message}", file=sys.stderr)
    return typer.Exit(code)


def database_error(exc: Exception, url: str) -> Exception:
    """A database's error as the library's: unreachable (exit 3) or misconfigured (2)."""
    reason = describe_error(exc)
    if classify_failure(exc) is FailureKind.OUTAGE:
        return DatabaseUnavailableError(f"the database {mask_url(url)} cannot be reached: {reason}")
    return ConfigurationError(
        f"the database {mask_url(url)} refused: {reason}; check the database URL "
        "(the database must exist and the user may create tables)"
    )


def command(
    group: typer.Typer, name: str, *, json_output: bool = True, site: bool = True
) -> Callable[[F], F]:
    """Register a command with the global options, the JSON flag and the error handling.

    The global options are added to the command's own parameters (a command
    that declares one of them itself keeps its own). The library's errors
    end the command with one line (JSON with ``--json``) and the exit code
    of the module docstring; ``-v`` prints the traceback too.

    Args:
        group: The typer app to register on.
        name: The command's name.
        json_output: Add ``--json`` (commands that print a result).
        site: Add the site options (``--site``, the URLs, ``--config``).

    Returns:
        The decorator.
    """

    def decorate(func: F) -> F:
        own = inspect.signature(func)
        hints = get_type_hints(func, include_extras=True)
        wanted = dict(_PARAMETERS)
        if not json_output:
            wanted.pop("as_json")
        if not site:
            for key in ("site", "backend_url", "database_url", "replica_url", "config"):
                wanted.pop(key)
        added = {key: hint for key, hint in wanted.items() if key not in own.parameters}
        params = [p.replace(annotation=hints[p.name]) for p in own.parameters.values()]
        params += [
            inspect.Parameter(
                key,
                inspect.Parameter.KEYWORD_ONLY,
                default=False if key in ("verbose", "as_json") else None,
                annotation=hint,
            )
            for key, hint in added.items()
        ]

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            global _CURRENT
            given: dict[str, Any] = {
                key: kwargs.pop(key) if key in added else kwargs.get(key) for key in wanted
            }
            _CURRENT = Options(**given).over(_ROOT)
            try:
                return func(**kwargs)
            except (typer.Exit, typer.Abort, KeyboardInterrupt):
                raise
            except typer.BadParameter as exc:
                if not _CURRENT.as_json:
                    raise
                raise fail(exc.format_message(), EXIT_USAGE, kind="UsageError") from None
            except BufferingError as exc:
                if _CURRENT.verbose:
                    traceback.print_exc()
                raise fail(str(exc), exit_code(exc), kind=type(exc).__name__) from None

        wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        group.command(name)(wrapper)
        return func

    return decorate


def console(*, stderr: bool = False) -> Console:
    """A console: the terminal's width, or unbounded in a pipe (unless ``COLUMNS`` is set).

    In a pipe nothing is wrapped or cut, so ``grep`` and ``awk`` see one
    line per row.
    """
    out = Console(stderr=stderr)
    if out.is_terminal or "COLUMNS" in os.environ:
        return out
    return Console(stderr=stderr, width=100_000)


def emit_json(data: object) -> None:
    """Print one JSON document on one line, flushed (NDJSON for ``--watch``)."""
    print(json.dumps(data, default=str), flush=True)


def configure_logging(verbose: bool) -> None:
    """Log to standard error: INFO with ``--verbose``, else WARNING."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format=FORMAT, stream=sys.stderr
    )
    install()


def settings_for(models: str | None = None, *, site: bool = True) -> BufferingSettings:
    """The settings: the command's options over the environment, ``.env`` and TOML.

    Args:
        models: ``--models``, if the command has it.
        site: Whether the command needs a site (``db init`` does not).

    Raises:
        ConfigurationError: A setting is missing or invalid (one short message).
    """
    opts = _CURRENT
    overrides: dict[str, object] = {
        "site_name": opts.site,
        "backend_url": opts.backend_url,
        "database_url": opts.database_url,
        "replica_url": opts.replica_url,
        "models": models,
    }
    if not site and opts.site is None:
        # The database's side names no site; any valid name satisfies the model.
        overrides["site_name"] = "_"
    return load_settings(config_file=opts.config, **overrides)


def registry_for(settings: BufferingSettings, *, required: bool = True) -> ModelRegistry:
    """The mapped classes named by ``--models`` / ``CCAT_BUFFERING_MODELS``."""
    if not settings.models:
        if not required:
            return ModelRegistry()
        raise typer.BadParameter(
            "name the mapped classes with --models package.module:Base or CCAT_BUFFERING_MODELS",
            param_hint="--models",
        )
    # As uvicorn does (its --app-dir defaults to "."): a module beside the
    # operator resolves, though the console script's sys.path lacks the
    # working directory.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return ModelRegistry.from_import_path(settings.models)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(
            f"--models / CCAT_BUFFERING_MODELS {settings.models!r} cannot be loaded: {exc}"
        ) from exc


@contextmanager
def progress(quiet: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """Report ``(phase, done, total)``: a bar on a terminal, plain lines otherwise."""
    console = Console(stderr=True)
    if quiet:
        yield lambda phase, done, total: None
        return
    if console.is_terminal:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), console=console
        ) as bar:
            tasks: dict[str, TaskID] = {}

            def show(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                bar.update(tasks[phase], completed=done, total=total)

            yield show
        return
    last: dict[str, int] = {}

    def plain(phase: str, done: int, total: int) -> None:
        step = max(total // 4, 1)
        if done // step == last.get(phase, -1) and done != total:
            return
        last[phase] = done // step
        print(f"{phase}: {done}/{total}", file=sys.stderr, flush=True)

    yield plain
