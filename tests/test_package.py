"""``pip install .`` gives the engine alone: a wheel of ``gptailor`` with its built-in families' files, no
top-level ``db``/``ui``, and an engine that works from anywhere without the app beside it.

The wheel is built offline from a copy of the package's sources (so the checkout gets no build folders),
installed with pip into a throwaway folder and used from a folder outside the checkout.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pip(*args: str, cwd: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "gptailor", src / "gptailor", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    pip("wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(out), cwd=src)
    (whl,) = out.glob("gptailor-*.whl")
    return whl


def test_the_wheel_holds_the_engine_and_its_families_and_nothing_of_the_app(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"gptailor"}  # no db/, ui/, tests/, bench/
    # every file the checkout's built-in families hold is in the wheel, at the same place
    shipped = [p.relative_to(ROOT).as_posix() for d in ("demo_family", "smol_family")
               for p in (ROOT / "gptailor" / "builtin" / d).rglob("*") if p.is_file()]
    assert "gptailor/builtin/demo_family/base/model.safetensors" in shipped  # the walk found the families
    assert "gptailor/builtin/smol_family/deltas/capitals/adapter_model.safetensors" in shipped
    assert sorted(set(shipped) - set(names)) == []
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gptailor").rglob("*.py")}
    assert sources <= set(names)


def test_the_wheel_declares_the_engines_needs_and_its_command(wheel):
    z = zipfile.ZipFile(wheel)
    info = next(n.split("/")[0] for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = z.read(f"{info}/METADATA").decode()
    needs = {re.split(r"[<>=!~\[; ]", line.split(":", 1)[1].strip())[0].lower()
             for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert {"torch", "transformers", "safetensors", "pyyaml", "smac"} <= needs
    # the app's pinned install list (requirements.txt) installs everything the engine needs
    pinned = {re.split(r"[<>=!~\[; ]", line.strip())[0].lower() for line in (ROOT / "requirements.txt").read_text()
              .splitlines() if line.strip() and not line.startswith("#")}
    assert needs <= pinned, needs - pinned
    assert "gptailor = gptailor.cli:main" in z.read(f"{info}/entry_points.txt").decode()


def test_the_installed_engine_works_outside_the_checkout_without_the_app(wheel, tmp_path):
    site, away = tmp_path / "site", tmp_path / "elsewhere"
    away.mkdir()
    pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=away)
    assert not (site / "db").exists() and not (site / "ui").exists()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    probe = """
import importlib.util, json
import gptailor
from gptailor.family.family import Family
fam = Family.from_spec("demo")
print(json.dumps({"file": gptailor.__file__, "layers": fam.n_layers, "members": fam.member_names,
                  "db": importlib.util.find_spec("db") is not None, "ui": importlib.util.find_spec("ui") is not None}))
"""
    r = subprocess.run([sys.executable, "-c", probe], cwd=away, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert Path(got["file"]).resolve().is_relative_to(site.resolve())  # the installed copy, not the checkout
    assert not got["db"] and not got["ui"]
    demo = json.loads((ROOT / "gptailor/builtin/demo_family/base/config.json").read_text())
    assert got["layers"] == demo["num_hidden_layers"]
    assert set(got["members"]) == {"base", "math", "strings", "facts"}
    # the installed `gptailor` command: the engine's command line
    r = subprocess.run([str(site / "bin" / "gptailor"), "info", "--json"], cwd=away, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["layers"] == demo["num_hidden_layers"]
