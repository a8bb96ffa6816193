"""The settings table in the sources is the one BufferingSettings gives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).parents[2] / "docs"


def test_the_settings_table_in_the_sources_is_current() -> None:
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    assert spec is not None and spec.loader is not None
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    text, problems = conf.settings_table()
    assert problems == []
    assert (DOCS / "_settings.rst").read_text(encoding="utf-8") == text, (
        "regenerate: python docs/conf.py > docs/_settings.rst"
    )
