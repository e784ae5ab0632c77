import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gptailor import demo

from conftest import make_tiny_family

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    path = make_tiny_family(d)
    demo.write_tasks(d, n_test=12)
    data = yaml.safe_load(path.read_text())
    data["suite"] = "tasks/suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gptailor", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_info_and_eval(spec):
    r = run("info", "-f", str(spec), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["layers"] == 4 and set(info["members"]) == {"base", "math", "code"}
    r = run("eval", "-f", str(spec), "-p", "0:base 1:math 2:drop 3:merge(math=.5,code=.5)", "--fidelity", "5", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["kept_layers"] == 3 and res["fidelity"] == 5 and set(res["scores"]) == {"math", "strings", "facts", "chat_ppl"}
    r = run("eval", "-f", str(spec), "-p", "base drop base base")
    assert r.returncode == 0 and "retention" in r.stdout and "chat_ppl" in r.stdout


def test_export_and_chat(spec, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"family": "tiny", "layers": ["base", "drop", "math", "code"]}))
    r = run("export", "-f", str(spec), "-p", f"@{plan_file}", "-o", str(tmp_path / "out"), "--fidelity", "4")
    assert r.returncode == 0, r.stderr
    assert "retention" in r.stdout and (tmp_path / "out" / "config.json").exists()
    r = run("export", "-f", str(spec), "-p", str(plan_file), "-o", str(tmp_path / "out"), "--no-eval")
    assert r.returncode == 2 and "not empty" in r.stderr
    r = run("chat", "-f", str(spec), "-p", "base base drop base", "12+3", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args,msg", [
    (["eval", "-p", "0:base 1:ghost"], "error: plan has 2 positions"),
    (["eval", "-p", "base ghost base base"], "error: position 1: unknown member 'ghost'"),
    (["info", "-f", "no-such-family"], "error: no family 'no-such-family'"),
])
def test_bad_input_exits_non_zero_with_one_line(spec, args, msg):
    if "-f" not in args:
        args = [*args, "-f", str(spec)]
    r = run(*args)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(msg), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
