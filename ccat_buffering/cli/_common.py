"""What every command shares: settings, logging, the site, progress on long work."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from ccat_buffering.coordinator import BufferingCoordinator
from ccat_buffering.logs import FORMAT, install
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.settings import BufferingSettings

__all__ = [
    "configure_logging",
    "open_site",
    "operator_site",
    "progress",
    "registry_for",
    "settings_with",
]

ProgressCallback = Callable[[str, int, int], None]


def configure_logging(verbose: bool) -> None:
    """Log to standard error: INFO with ``--verbose``, else WARNING."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format=FORMAT, stream=sys.stderr
    )
    install()


def settings_with(models: str | None = None) -> BufferingSettings:
    """The site's settings from the environment, ``.env`` and TOML, with ``--models``."""
    settings = BufferingSettings()
    if models:
        settings = settings.model_copy(update={"models": models})
    return settings


def registry_for(settings: BufferingSettings, *, required: bool = True) -> ModelRegistry:
    """The mapped classes named by ``--models`` / ``CCAT_BUFFERING_MODELS``."""
    if not settings.models:
        if not required:
            return ModelRegistry()
        raise typer.BadParameter(
            "name the mapped classes with --models package.module:Base or CCAT_BUFFERING_MODELS",
            param_hint="--models",
        )
    return ModelRegistry.from_import_path(settings.models)


def open_site(settings: BufferingSettings, registry: ModelRegistry) -> BufferingCoordinator:
    """The site the operator commands look at, not started.

    Tests replace this to hand the commands a prepared site.
    """
    return BufferingCoordinator.from_settings(settings, registry=registry, start=False)


def operator_site(models: str | None = None) -> tuple[BufferingSettings, BufferingCoordinator]:
    """The settings and (not started) site an operator command looks at.

    The mapped classes are optional: these commands read the stores, not the models.
    """
    settings = settings_with(models)
    return settings, open_site(settings, registry_for(settings, required=False))


@contextmanager
def progress(quiet: bool = False) -> Iterator[ProgressCallback]:
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
