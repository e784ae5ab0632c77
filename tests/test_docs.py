"""The docs name only what exists: file paths and dotted names in the README and docs/ resolve in this
checkout, and docs/architecture.md has a line for every module of the engine, the store and the UI.

A module moved or renamed without its docs fails here with the stale name, rather than leaving a reader
at a path that is gone. (The site itself is built by ``mkdocs build --strict`` in .ci/run.)"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("gptailor", "db", "ui", "bench", "tests", "suites")


def named_paths(text: str) -> set[str]:
    """Repository paths such as ``gptailor/eval/speed.py`` or ``gptailor/builtin/demo_family/``."""
    pattern = rf"(?<![\w/.-])((?:{'|'.join(TOP)})/[\w./-]*[\w/])"
    return {p for p in re.findall(pattern, text) if "." in p.rsplit("/", 1)[-1] or p.endswith("/")}


def dotted_names(text: str) -> set[str]:
    """Dotted engine names in code spans, such as ``gptailor.search.trials.rank_key``."""
    names = re.findall(r"`[^`]*?\b(gptailor(?:\.\w+)+)", text)
    return {n for n in names if not n.startswith("gptailor.db")}  # gptailor.db is the database file


def resolves(name: str) -> bool:
    """Import the longest module prefix of ``name``, then find the rest as attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_a_page_names_exists(page):
    text = page.read_text()
    missing = sorted(p for p in named_paths(text)
                     if not (ROOT / p).exists() and not p.startswith("tests/output/"))  # screenshots are made by tests
    assert not missing, f"{page.name} names paths that are not in the repository: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_dotted_name_a_page_names_resolves(page):
    stale = sorted(n for n in dotted_names(page.read_text()) if not resolves(n))
    assert not stale, f"{page.name} names modules or objects that do not exist: {stale}"


def documented_modules(heading: str) -> set[str]:
    """The ``x.py`` entries of the module table under ``### `heading` ...`` in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split(f"### `{heading}`", 1)[1].split("\n#", 1)[0]
    first_cells = [row.split("|")[1] for row in section.splitlines() if row.startswith("| `")]
    return {m for cell in first_cells for m in re.findall(r"`([\w/]+(?:\.py|/))`", cell)}


@pytest.mark.parametrize("package", ["gptailor/", "db/", "ui/"])
def test_architecture_page_has_a_line_for_every_module(package):
    documented = documented_modules(package)
    root = ROOT / package
    modules = {str(p.relative_to(root)) for p in root.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py") and "migrations" not in p.parts}
    missing = sorted(modules - documented)
    gone = sorted(m for m in documented if not (root / m).exists())
    assert not missing, f"docs/architecture.md: add a line for each of {missing} under `{package}`"
    assert not gone, f"docs/architecture.md lists modules that are gone: {gone}"
