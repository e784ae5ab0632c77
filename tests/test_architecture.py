"""The import rules (pyproject.toml's ``[tool.importlinter]``) hold, and they bite.

The second half runs the very same contracts on a throwaway tree named like the project (every engine
layer an empty module, plus ``db`` and ``ui``): clean it passes, and each kind of broken rule fails it.
"""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([LINT, "--no-cache", "--no-logo", str(config)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_project_keeps_its_import_contracts():
    r = lint(ROOT / "pyproject.toml", ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout and " kept" in r.stdout, r.stdout


def _contract_text() -> str:
    """The ``[tool.importlinter]`` tables of the project's pyproject.toml, verbatim."""
    lines, inside = [], False
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("["):
            inside = line.lstrip("[").startswith("tool.importlinter")
        if inside:
            lines.append(line)
    return "\n".join(lines) + "\n"


def _layers() -> list[str]:
    contracts = tomllib.loads(_contract_text())["tool"]["importlinter"]["contracts"]
    return next(c["layers"] for c in contracts if c["type"] == "layers")


@pytest.fixture
def tree(tmp_path):
    """gptailor/<every layer>.py, db/{store,runs}.py, ui/app.py: empty but for db.runs importing db.store (one
    direction alone is allowed), so every rule holds."""
    (tmp_path / "pyproject.toml").write_text(_contract_text())
    for pkg in ("gptailor", "db", "ui"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    for layer in _layers():
        (tmp_path / "gptailor" / f"{layer}.py").write_text("")
    for mod in ("db/store.py", "ui/app.py"):
        (tmp_path / mod).write_text("")
    (tmp_path / "db" / "runs.py").write_text("from db import store\n")
    return tmp_path


def test_a_clean_tree_passes(tree):
    r = lint(tree / "pyproject.toml", tree)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("module,line,broken", [
    ("gptailor/plan.py", "def f():\n    import db.store\n", "the engine imports neither"),  # even a lazy import
    ("gptailor/common.py", "import ui.app\n", "the engine imports neither"),
    ("db/runs.py", "from ui import app\n", "the store never imports the UI"),
    ("gptailor/weights.py", "from gptailor import search\n", "engine subpackages import only those before"),
    ("gptailor/eval.py", "import gptailor.cli\n", "engine subpackages import only those before"),
    ("db/store.py", "from db import runs\n", "no import cycles"),  # with runs importing store: a circle
])
def test_each_broken_rule_fails_the_check(tree, module, line, broken):
    (tree / module).write_text(line)
    r = lint(tree / "pyproject.toml", tree)
    assert r.returncode != 0, r.stdout
    assert "1 broken" in r.stdout, r.stdout
    broken_lines = [ln for ln in r.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert len(broken_lines) == 1 and broken_lines[0].startswith(broken), r.stdout
