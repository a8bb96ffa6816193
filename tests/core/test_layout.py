"""The house: every module lives in its stage, and imports point one way.

A transaction is written (``write``), buffered (``buffer``), drained
(``drain``) and confirmed (``confirm``); each stage may import the stages
before it, never those after. ``read`` sits beside the drain and imports
neither it nor anything after it. ``config``, ``observe``, ``site`` and ``web``
are above the core's stages; ``cli``, ``console``, ``demo`` and ``testing`` on
top. Nothing in the core imports a backend package. Imports under
``if TYPE_CHECKING:`` are not edges (they never run), so an annotation may
name what a stage hands to it. The graph is read from the source with
:mod:`ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ccat_buffering"

# Flat on purpose: what every stage imports.
FOUNDATION = {"errors", "masking", "logs", "_closing"}

# A stage's rank: a module may import modules of its own rank or lower.
RANK = {
    "": 0,  # the foundation
    "write": 1,
    "buffer": 2,
    "drain": 3,
    "read": 3,
    "conflicts": 3,
    "confirm": 4,
    "config": 5,
    "observe": 6,
    "site": 7,
    "web": 8,
    "cli": 9,
    "console": 9,
    "demo": 9,
    "testing": 9,
    "__init__": 9,  # the public API: what cli, console and demo import by name
    "__main__": 9,
}

# The policy vocabulary a model declares (registry) is conflicts' write-side part.
MODULE_RANK = {
    "ccat_buffering.conflicts": 1,
    "ccat_buffering.conflicts.kinds": 1,
    "ccat_buffering.conflicts.merge": 1,
}

# Stages of one rank that stay apart: a read never waits on the drain.
APART = {("read", "drain"), ("drain", "read"), ("read", "conflicts")}

BACKENDS = ("ccat_buffering_redis", "ccat_buffering_memory")
ON_TOP = {"cli", "console", "demo", "testing", "__init__", "__main__"}


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str, path: Path | None = None) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    if len(parts) == 2 and not (PACKAGE / parts[1]).is_dir():
        return "__main__" if parts[1] == "__main__" else ""
    return parts[1]


def _rank(module: str) -> int:
    for prefix in sorted(MODULE_RANK, key=len, reverse=True):
        if module == prefix:
            return MODULE_RANK[prefix]
    return RANK[_stage(module)]


def _exists(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, module)`` of every import that runs, ``TYPE_CHECKING`` blocks left out."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    found.append((child.lineno, sub if _exists(sub) else child.module))
            visit(child)

    visit(tree)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_stage() -> None:
    flat = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert flat <= FOUNDATION, (
        f"flat modules outside the foundation: {sorted(flat - FOUNDATION)}; "
        f"put each in the stage that owns its concept (see docs/contributing.rst)"
    )
    stages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert stages <= set(RANK), f"sub-packages without a rank here: {sorted(stages - set(RANK))}"


def test_every_stage_says_what_it_owns_and_may_import() -> None:
    for stage in sorted(set(RANK) - {"", "__init__", "__main__"}):
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc, f"ccat_buffering/{stage}/__init__.py has no docstring"
        if stage not in ON_TOP:
            assert "import" in doc, f"{stage}'s docstring does not say what it may import"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path: Path) -> None:
    module = _name(path)
    stage, rank = _stage(module), _rank(module)
    wrong = []
    for line, target in _imports(ast.parse(path.read_text(), str(path))):
        top = target.split(".")[0]
        if top in BACKENDS and stage not in ON_TOP:
            wrong.append(f"line {line}: {target} (the core never imports a backend)")
        if top != "ccat_buffering":
            continue
        there = _stage(target)
        if _rank(target) > rank:
            wrong.append(f"line {line}: {target} ({there or 'foundation'} is above {stage})")
        elif (stage, there) in APART:
            wrong.append(f"line {line}: {target} ({stage} and {there} stay apart)")
    assert not wrong, f"{module} imports against the direction:\n" + "\n".join(wrong)


def test_the_check_sees_a_wrong_import() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "from ccat_buffering.drain import executor\n"
        "if TYPE_CHECKING:\n"
        "    from ccat_buffering.site.coordinator import BufferingCoordinator\n"
    )
    targets = [t for _, t in _imports(tree)]
    assert "ccat_buffering.drain.executor" in targets
    assert not any("coordinator" in t for t in targets)
    assert _rank("ccat_buffering.drain.executor") > _rank("ccat_buffering.buffer.manager")
