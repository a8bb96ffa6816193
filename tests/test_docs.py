"""The documentation's code excerpts still name real code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
DIRECTIVE = re.compile(r"^\s*\.\. literalinclude:: (\S+)\s*\n((?:\s+:[^\n]+\n)*)", re.MULTILINE)


def _excerpts() -> list[tuple[str, Path, dict[str, str]]]:
    found = []
    for page in sorted(DOCS.glob("*.rst")):
        for match in DIRECTIVE.finditer(page.read_text()):
            options = dict(re.findall(r":([\w-]+):\s*(.*)", match.group(2)))
            found.append((page.name, (page.parent / match.group(1)).resolve(), options))
    return found


def _objects(source: str) -> set[str]:
    names: set[str] = set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(prefix + child.name)
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.Assign | ast.AnnAssign):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                names.update(prefix + t.id for t in targets if isinstance(t, ast.Name))

    visit(ast.parse(source), "")
    return names


EXCERPTS = _excerpts()


def test_the_docs_include_code() -> None:
    assert len(EXCERPTS) >= 5


@pytest.mark.parametrize(("page", "path", "options"), EXCERPTS, ids=lambda v: str(v)[:60])
def test_every_excerpt_names_code_that_exists(
    page: str, path: Path, options: dict[str, str]
) -> None:
    assert path.exists(), f"{page} includes {path}, which does not exist"
    source = path.read_text()
    if "pyobject" in options:
        assert options["pyobject"] in _objects(source), (
            f"{page} includes {options['pyobject']} from {path.name}, which no longer defines it"
        )
    for marker in ("start-after", "end-before"):
        if marker in options:
            assert options[marker] in source, (
                f"{page}: marker {options[marker]!r} not in {path.name}"
            )
