"""Old import paths kept for one release: a module ``__getattr__`` that warns, then forwards."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable


def forward(old: str, new: str, names: frozenset[str] | None = None) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``old`` that finds names in ``new``, with a warning.

    Args:
        old: The module that used to define the names.
        new: The module that defines them now.
        names: The names that moved; ``None`` for every public name of ``new``.

    Returns:
        The ``__getattr__`` to assign in ``old``: it raises :class:`AttributeError`
        for other names, and a :class:`DeprecationWarning` for those it forwards.
    """

    def __getattr__(name: str) -> object:
        module = importlib.import_module(new)
        public = names if names is not None else frozenset(getattr(module, "__all__", ()))
        if name not in public:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(
            f"{old}.{name} moved to {new}.{name}; import it from there "
            f"({old} keeps it for one release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(module, name)

    return __getattr__
