"""The documentation's code excerpts name real code, and its code blocks run as written.

Python blocks of every page (and README.md) run in order through
``tests/docrun.py``; shell blocks' settings are read as settings; TOML parses
and, where it holds settings, loads; ``make`` targets and extras exist. The
``$ ccat-buffering ...`` lines of every page run in ``tests/docs/test_runbook.py``.
What cannot run here is listed in ``NOT_RUN`` with its reason.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
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


# --- Every code block of every page runs (or is checked) as written ---

ROOT = DOCS.parent
PAGES = [*sorted(DOCS.glob("*.rst")), ROOT / "README.md"]
RST_BLOCK = re.compile(r"^( *)\.\. code-block:: (\w+)\n((?:\1   .*\n|[ \t]*\n)+)", re.MULTILINE)
MD_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)

# Blocks that cannot run here, each with the reason; keyed by page and a line of the block.
NOT_RUN = {
    ("backends.rst", "from my_package import MyBackend"): "a third party's package",
    ("background-processor.rst", "from myproject.models import Base"): "a service's own models",
    ("redis.rst", "redis+sentinel://sentinel-1"): "names a production Sentinel deployment",
    (
        "contributing.rst",
        "streaming_replica()",
    ): "starts PostgreSQL; tests/integration/test_replication_pg.py runs it",
}


def blocks(page: Path) -> list[tuple[str, str]]:
    """``(language, code)`` of each code block of a page, in order, dedented."""
    text = page.read_text(encoding="utf-8")
    if page.suffix == ".md":
        return [(m.group(1), m.group(2)) for m in MD_BLOCK.finditer(text)]
    found = []
    for match in RST_BLOCK.finditer(text):
        indent = len(match.group(1)) + 3
        lines = [line[indent:] for line in match.group(3).splitlines()]
        found.append((match.group(2), "\n".join(lines).strip("\n") + "\n"))
    return found


def _runnable(page: Path) -> list[str]:
    python = []
    for language, code in blocks(page):
        if language != "python":
            continue
        if any(page.name == name and line in code for name, line in NOT_RUN):
            continue
        python.append(code)
    return python


def test_every_skipped_block_still_exists() -> None:
    for name, line in NOT_RUN:
        page = ROOT / name if name.endswith(".md") else DOCS / name
        assert any(line in code for _, code in blocks(page)), f"{name} no longer has {line!r}"


@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p)], ids=lambda p: p.name)
def test_every_python_block_runs(page: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCAT_BUFFERING_")}
    # What a reader of the quickstart has exported (from_settings() without settings).
    env.update(
        {
            "CCAT_BUFFERING_SITE_NAME": "docs",
            "CCAT_BUFFERING_DATABASE_URL": "sqlite+aiosqlite:///docs-env.db",
        }
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "docrun.py")],
        input=json.dumps(_runnable(page)),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{page.name}:\n{result.stdout}\n{result.stderr[-3000:]}"


def _settings_lines(code: str) -> dict[str, str]:
    """``CCAT_BUFFERING_*`` assignments of a shell block (``export X=...`` or ``X=... \\``)."""
    found = {}
    for raw in code.splitlines():
        line = raw.strip().removeprefix("$ ").removeprefix("export ").rstrip("\\").strip()
        match = re.match(r"(CCAT_BUFFERING_\w+)=(\S+)", line)
        if match:
            found[match.group(1)] = match.group(2).strip("'\"")
    return found


SHELL = [
    (page, code)
    for page in PAGES
    for language, code in blocks(page)
    if language in ("sh", "console", "bash") and _settings_lines(code)
]


@pytest.mark.parametrize(("page", "code"), SHELL, ids=lambda v: getattr(v, "name", "")[:30])
def test_every_documented_setting_is_valid(
    page: Path, code: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ccat_buffering.config.settings import load_settings

    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("CCAT_BUFFERING_")]:
        monkeypatch.delenv(name)
    for name, value in _settings_lines(code).items():
        monkeypatch.setenv(name, value)
    if "CCAT_BUFFERING_SITE_NAME" not in os.environ:
        monkeypatch.setenv("CCAT_BUFFERING_SITE_NAME", "cerro")  # a fragment of a longer setup
    load_settings()  # raises with the setting's name when a page shows a bad value


TOML = [(page, code) for page in PAGES for language, code in blocks(page) if language == "toml"]


@pytest.mark.parametrize(("page", "code"), TOML, ids=lambda v: getattr(v, "name", "")[:30])
def test_every_toml_block_parses_and_settings_are_valid(
    page: Path, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccat_buffering.config.settings import load_settings

    tomllib.loads(code)
    if "site_name" in code:
        path = tmp_path / "ccat-buffering.toml"
        path.write_text(code)
        for name in [n for n in os.environ if n.startswith("CCAT_BUFFERING_")]:
            monkeypatch.delenv(name)
        monkeypatch.chdir(tmp_path)
        assert load_settings(config_file=str(path)).site_name


MAKE = [
    (page, target)
    for page in PAGES
    for language, code in blocks(page)
    if language in ("sh", "console")
    for target in re.findall(r"^\s*(?:\$ )?make ([\w-]+)", code, re.MULTILINE)
]


@pytest.mark.parametrize(("page", "target"), MAKE, ids=lambda v: getattr(v, "name", str(v)))
def test_every_make_target_exists(page: Path, target: str) -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), (
        f"{page.name}: make {target}"
    )


EXTRAS = [
    (page, extra)
    for page in [*PAGES, DOCS / "index.rst"]
    for spec in re.findall(r"ccat-buffering\[([\w,]+)\]", page.read_text())
    for extra in spec.split(",")
]


@pytest.mark.parametrize(("page", "extra"), EXTRAS, ids=lambda v: getattr(v, "name", str(v)))
def test_every_documented_extra_exists(page: Path, extra: str) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extra in extras, f"{page.name} names the extra [{extra}]"


# --- Every dotted name of the package that a page names exists ---

DOTTED = re.compile(r"(?<![\w.])(ccat_buffering(?:_redis|_memory)?(?:\.\w+)+)")
# Dotted names that are not Python objects, each with what it is.
NOT_OBJECTS = {
    "ccat_buffering.backends": "the entry-point group of backends",
    "ccat_buffering.commit_lsn": "a span attribute",
    "ccat_buffering.transaction_id": "a span attribute",
    "ccat_buffering.worker": "the worker's logger",
    "ccat_buffering.db": "the SQLite file an old default left behind",
}


def _resolves(name: str) -> bool:
    import importlib

    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(found, attr):
                # An instance attribute: set in the class's own code.
                return isinstance(found, type) and _sets(found, attr)
            found = getattr(found, attr)
        return True
    return False


def _sets(cls: type, attr: str) -> bool:
    import inspect

    return any(
        f"self.{attr} =" in inspect.getsource(base)
        for base in cls.__mro__
        if base.__module__.startswith("ccat_buffering")
    )


def _dotted_names(page: Path) -> set[str]:
    names = set()
    for literal in re.findall(r"``([^`]+)``|`~?([\w.]+)`", page.read_text()):
        for text in literal:
            names.update(m.rstrip(".") for m in DOTTED.findall(text))
    return names - set(NOT_OBJECTS)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_dotted_name_a_page_gives_exists(page: Path) -> None:
    missing = sorted(name for name in _dotted_names(page) if not _resolves(name))
    assert not missing, f"{page.name} names what does not exist: {missing}"


def test_the_walk_names_a_module_at_every_step() -> None:
    text = (DOCS / "contributing.rst").read_text()
    after = text.split("One transaction, from submit() to replicated")[1]
    walk = after.split("What lives where")[0]
    steps = re.split(r"\n#\. ", walk)[1:]
    assert len(steps) >= 7, "the walk from submit() to replicated lost its steps"
    for step in steps:
        names = {n for n in DOTTED.findall(step)}
        assert names, f"a step of the walk names no module: {step[:80]!r}"
        assert all(_resolves(n) for n in names), step
