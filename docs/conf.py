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
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
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
