"""Open a backend from a URL, through the ``ccat_buffering.backends`` entry points.

The URL's scheme names an entry point; the entry point names a class with a
``from_url(url, *, site, **options)`` constructor. Nothing is imported until a
URL asks for it, and a backend whose extra is not installed says which to
install. A third-party backend registers itself the same way::

    [project.entry-points."ccat_buffering.backends"]
    mybackend = "my_package:MyBackend"
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any
from urllib.parse import urlsplit

from ccat_buffering.buffer.protocols import Backend
from ccat_buffering.errors import ConfigurationError
from ccat_buffering.masking import mask_url

__all__ = ["ENTRY_POINT_GROUP", "available_schemes", "open_backend"]

ENTRY_POINT_GROUP = "ccat_buffering.backends"

_EXTRAS = {"redis": "redis", "rediss": "redis", "unix": "redis"}


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_schemes() -> list[str]:
    """URL schemes with a registered backend, sorted."""
    return sorted(_entry_points())


def open_backend(url: str, *, site: str, **options: Any) -> Backend:
    """Open the backend that ``url``'s scheme names, for ``site``.

    Args:
        url: ``memory://``, ``redis://host:port/db``, ...
        site: The site's name.
        **options: Passed to the backend's ``from_url``.

    Returns:
        The backend; it owns what it opened and closes it in ``aclose()``.

    Raises:
        ConfigurationError: No backend is registered for the scheme, or its
            package cannot be imported (the message names the extra to install).
    """
    scheme = urlsplit(url).scheme.lower()
    registered = _entry_points()
    entry = registered.get(scheme)
    if entry is None:
        known = ", ".join(f"{name}://" for name in sorted(registered)) or "none"
        raise ConfigurationError(
            f"no backend for the URL {mask_url(url)!r}: known schemes are {known}"
        )
    extra = _EXTRAS.get(scheme.split("+")[0])
    hint = f"; install it with: pip install 'ccat-buffering[{extra}]'" if extra else ""
    try:
        backend_class = entry.load()
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme}:// backend could not be imported ({exc}){hint}"
        ) from exc
    except AttributeError as exc:
        raise ConfigurationError(
            f"the {scheme}:// backend ({entry.value}) is not available in this release{hint}"
        ) from exc
    backend: Backend = backend_class.from_url(url, site=site, **options)
    return backend
