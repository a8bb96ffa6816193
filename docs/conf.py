"""Sphinx configuration of the ccat-buffering documentation.

Build with warnings as errors::

    .venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

# autodoc imports the packages from the working tree, not from an installed copy.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# FastAPI (through pydantic) fails to import once autodoc has evaluated the
# annotations of some of the library's pydantic models; imported first, it is
# already there when the FastAPI modules are documented.
import fastapi  # noqa: E402, F401

project = "ccat-buffering"
author = "The ccat-buffering authors"
copyright = "the ccat-buffering authors"  # noqa: A001 (Sphinx's name)

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

# No intersphinx: the build must not need the network. Without it, references
# to Python, pydantic or SQLAlchemy names stay plain text, so nitpicky is off.
nitpicky = False

exclude_patterns = [
    "_build",
    "_settings.rst",
    "_type_matrix.rst",
    "_bench_results.rst",
    "Thumbs.db",
    ".DS_Store",
]
templates_path: list[str] = []

# -- autodoc -----------------------------------------------------------------

autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    # pydantic's machinery, not this project's API.
    "exclude-members": "model_config, settings_customise_sources",
}

# -- napoleon (Google style) ---------------------------------------------------

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
# "Attributes:" sections become :ivar: fields, not attribute directives, so that
# dataclass and pydantic fields are never described twice.
napoleon_use_ivar = True
napoleon_use_rtype = False

# -- HTML ----------------------------------------------------------------------

html_theme = "furo"
html_title = "ccat-buffering"
html_static_path: list[str] = []


# -- checks and fixes ------------------------------------------------------------


def _hide_private_parameters(app, what, name, obj, options, signature, return_annotation):
    """Drop pydantic-settings' underscored init parameters from settings signatures."""
    from pydantic_settings import BaseSettings

    if what != "class" or not (isinstance(obj, type) and issubclass(obj, BaseSettings)):
        return None
    fields = ", ".join(f"{field}={info.default!r}" for field, info in obj.model_fields.items())
    return f"(*, {fields})", return_annotation


SETTINGS_TABLE = Path(__file__).resolve().parent / "_settings.rst"
"""The settings table, kept in the sources so that it reads without a build."""
"""Pages written by the build itself (ignored by Git and by Sphinx's source search)."""


def _docstring_attributes(cls):
    """The ``Attributes:`` section of a Google-style class docstring, as name -> text."""
    import inspect
    import re

    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    found = {}
    name = None
    inside = False
    for line in lines:
        if not inside:
            inside = line.strip() == "Attributes:"
            continue
        if line and not line.startswith(" "):
            break  # the next section
        match = re.match(r"^    (\w+):\s*(.*)$", line)
        if match:
            name = match.group(1)
            found[name] = match.group(2).strip()
        elif name and line.strip():
            found[name] += " " + line.strip()
    return found


def _type_text(info):
    """A field's type for the table: ``int``, ``str | None``, one of literal values."""
    import typing

    annotation = info.annotation
    if typing.get_origin(annotation) is typing.Literal:
        text = " or ".join(f'``"{value}"``' for value in typing.get_args(annotation))
    elif isinstance(annotation, type):
        text = f"``{annotation.__name__}``"
    else:
        text = f"``{str(annotation).replace('typing.', '')}``"
    bounds = []
    for item in info.metadata:
        for attribute, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attribute, None)
            if value is not None:
                bounds.append(f"{sign} {value}")
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _default_text(info):
    default = info.default
    return f'``"{default}"``' if isinstance(default, str) else f"``{default!r}``"


def settings_table():
    """The reference table of every ``BufferingSettings`` field, as reStructuredText.

    Each row comes from the class: name, variable, type and default from the
    field, the description from the docstring's ``Attributes:`` section. The
    returned list holds the problems found (a field without a description, a
    description without a field).
    """
    from ccat_buffering.config.settings import BufferingSettings

    described = _docstring_attributes(BufferingSettings)
    fields = BufferingSettings.model_fields
    prefix = BufferingSettings.model_config.get("env_prefix", "")
    problems = [
        f"BufferingSettings: the field {name!r} has no description under Attributes:"
        for name in fields
        if not described.get(name)
    ]
    problems += [
        f"BufferingSettings: Attributes: describes {name!r}, which is not a field"
        for name in described
        if name not in fields
    ]
    lines = [
        ".. Generated from BufferingSettings: python docs/conf.py > docs/_settings.rst",
        "   Do not edit it: change the class and its docstring; the build checks it.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 20 30 14 16 40",
        "",
        "   * - Setting",
        "     - Environment variable",
        "     - Type",
        "     - Default",
        "     - Meaning",
    ]
    for name, info in fields.items():
        lines += [
            f"   * - ``{name}``",
            f"     - ``{prefix}{name.upper()}``",
            f"     - {_type_text(info)}",
            f"     - {_default_text(info)}",
            f"     - {described.get(name) or '(undocumented)'}",
        ]
    return "\n".join(lines) + "\n", problems


def _check_settings_table(app):
    """Warn (an error under -W) when ``_settings.rst`` is not the table the class gives.

    The table is kept in the sources, so that it reads on GitHub and in an
    editor without a build; regenerate it with
    ``python docs/conf.py > docs/_settings.rst``.
    """
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    text, problems = settings_table()
    for problem in problems:
        logger.warning(problem)
    if not SETTINGS_TABLE.exists() or SETTINGS_TABLE.read_text(encoding="utf-8") != text:
        logger.warning(
            "docs/_settings.rst differs from BufferingSettings: regenerate it with "
            "python docs/conf.py > docs/_settings.rst"
        )


def _check_redis_key_table(app):
    """Warn (an error under -W) when redis.rst's key table drifts from the key schema.

    The table must name every suffix of ``ccat_buffering_redis.keys.SUFFIXES``
    and no other, and mark as bounded exactly the keys in ``BOUNDED``.
    """
    import re

    from sphinx.util import logging

    from ccat_buffering_redis.keys import BOUNDED, SUFFIXES

    logger = logging.getLogger(__name__)
    text = (Path(app.srcdir) / "redis.rst").read_text(encoding="utf-8")
    start = text.find(".. The build checks that this table")
    end = text.find("\nOperations and scripts\n", start)
    if start < 0 or end < 0:
        logger.warning("redis.rst: the key table or its check marker is missing")
        return
    rows = {}
    for row in re.split(r"\n   \* - ", text[start:end])[1:]:
        match = re.match(r"``([^`]+)``", row)
        if match and match.group(1) != "Key" and row.strip() != "Key":
            rows[match.group(1).split("<", 1)[0]] = row
    expected = set(SUFFIXES.values())
    for suffix in sorted(expected - rows.keys()):
        logger.warning("redis.rst: the key table has no row for the suffix %r", suffix)
    for suffix in sorted(rows.keys() - expected):
        logger.warning("redis.rst: the key table names %r, which keys.py does not", suffix)
    for suffix, row in rows.items():
        bounded = any(
            b == suffix or (suffix.endswith(":") and b.startswith(suffix)) for b in BOUNDED
        )
        if bounded != ("(bounded" in row):
            logger.warning(
                "redis.rst: the key table %s %r as bounded",
                "does not mark" if bounded else "wrongly marks",
                suffix,
            )


def setup(app):
    """Connect the local checks and fixes."""
    app.connect("autodoc-process-signature", _hide_private_parameters)
    app.connect("builder-inited", _check_settings_table)
    app.connect("builder-inited", _check_redis_key_table)
    return {"parallel_read_safe": True}


if __name__ == "__main__":
    sys.stdout.write(settings_table()[0])
