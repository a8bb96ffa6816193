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

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
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
    fields = ", ".join(
        f"{field}={info.default!r}" for field, info in obj.model_fields.items()
    )
    return f"(*, {fields})", return_annotation


def _check_settings_table(app):
    """Warn (an error under -W) when configuration.rst misses a settings field.

    The table is written by hand; this keeps it from drifting from the code.
    """
    from sphinx.util import logging

    from ccat_buffering.settings import BufferingSettings

    logger = logging.getLogger(__name__)
    text = (Path(app.srcdir) / "configuration.rst").read_text(encoding="utf-8")
    for field, info in BufferingSettings.model_fields.items():
        variable = f"CCAT_BUFFERING_{field.upper()}"
        row = f"   * - ``{field}``\n     - "
        if row not in text or f"``{variable}``" not in text:
            logger.warning("configuration.rst: no table row for the setting %r", field)
            continue
        shown = text.split(row, 1)[1].split("\n", 1)[0]
        default = info.default
        expected = f'"{default}"' if isinstance(default, str) else repr(default)
        if f"``{expected}``" not in shown:
            logger.warning(
                "configuration.rst: the default of %r is %s in the code, not %s",
                field,
                expected,
                shown,
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
        bounded = any(b == suffix or (suffix.endswith(":") and b.startswith(suffix)) for b in BOUNDED)
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
