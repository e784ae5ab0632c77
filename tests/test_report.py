"""``python -m gptailor report``: the members' table of a real family (the demo's), with progress, each
member scored once, its values those of an independent scoring of each member's own checkpoint."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from gptailor.eval.evaluator import Evaluator
from gptailor.eval.members import Row, markdown, naive_plan
from gptailor.eval.suite import load_suite
from gptailor.family.family import Family
from gptailor.family.spec import DEMO_DIR

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 1800  # only against a command that hangs; a loaded machine may take minutes
N_EXAMPLES = 24  # per task (half of them the test split): the demo's own tasks, cut to keep the test short


@pytest.fixture(scope="module")
def suite_path(tmp_path_factory) -> Path:
    """The demo family's suite with its first ``N_EXAMPLES`` examples per task."""
    out = tmp_path_factory.mktemp("suite")
    src = DEMO_DIR / "tasks"
    for f in src.glob("*.jsonl"):
        (out / f.name).write_text("".join(f.read_text().splitlines(keepends=True)[:N_EXAMPLES]))
    (out / "suite.yaml").write_text((src / "suite.yaml").read_text())
    return out / "suite.yaml"


@pytest.fixture(scope="module")
def reported(suite_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "gptailor", "report", "--family", "demo", "--suite", str(suite_path),
                        "--json"], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout), r.stderr.splitlines()


def test_report_prints_progress_per_member_and_task_and_scores_each_member_once(reported):
    rows, lines = reported
    fam = Family.from_spec("demo")
    tasks = yaml.safe_load((DEMO_DIR / "tasks" / "suite.yaml").read_text())["tasks"]
    members = [line for line in lines if line.startswith("scoring member ")]
    assert members == [f"scoring member {m} ({k + 1} of {len(fam.member_names)})"
                       for k, m in enumerate(fam.member_names)]
    # every scoring pass over a model says each task as it starts: members + the naive cut, once each
    task_lines = [line for line in lines if re.fullmatch(r"  scoring \S+ \(task \d+ of \d+\)", line)]
    assert len(task_lines) == (len(fam.member_names) + 1) * len(tasks)
    first = lines.index(members[0])
    assert task_lines[:len(tasks)] == [f"  scoring {t['name']} (task {k + 1} of {len(tasks)})"
                                       for k, t in enumerate(tasks)]
    assert lines.index(task_lines[0]) == first + 1  # progress as it goes, not at the end
    assert [r["model"] for r in rows] == [*fam.member_names, naive_plan(Evaluator(fam, load_suite(DEMO_DIR / "tasks"
                                                                                                   / "suite.yaml")))[0]]


def _close(got: float, want: float) -> bool:
    return math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-9)


def test_report_values_are_each_members_own_checkpoint_scored_independently(reported, suite_path):
    rows, _ = reported
    fam = Family.from_spec("demo")
    ev = Evaluator(fam, load_suite(suite_path))  # a fresh evaluator, in this process
    own = {}
    for m in fam.member_names:  # each member's own checkpoint, loaded by transformers (not stitched)
        model = AutoModelForCausalLM.from_pretrained(DEMO_DIR / m, dtype=torch.float32).eval()
        own[m] = ev.score_model(model, None, "test")
    by_label = {r["model"]: r for r in rows}
    for m, scores in own.items():
        assert by_label[m]["scores"].keys() == scores.keys()
        assert all(_close(by_label[m]["scores"][t], v) for t, v in scores.items()), (m, by_label[m], scores)
    kinds = {t.name: t.kind for t in ev.suite}
    best = {t: max((own[m][t] for m in own), key=lambda v: -v if kinds[t] == "perplexity" else v) for t in kinds}
    for m, scores in own.items():  # family retention by hand: each task against the best member, capped at 1
        rets = [min(1.0, best[t] / v) if kinds[t] == "perplexity" else min(1.0, v / best[t])
                for t, v in scores.items() if best[t] > 0]
        assert _close(by_label[m]["retention"]["family"], sum(rets) / len(rets))
    label, plan = naive_plan(ev)
    res = ev.evaluate(plan, None, "test")
    assert all(_close(by_label[label]["scores"][t], v) for t, v in res.scores.items())
    assert _close(by_label[label]["retention"]["family"], res.retentions["family"])


def test_markdown_table_shows_percentages_perplexity_and_both_retentions(suite_path):
    ev = Evaluator(Family.from_spec("demo"), load_suite(suite_path))
    text = markdown(ev, [Row("base", {"math": .14, "strings": .19, "facts": .11, "chat_ppl": 3.354},
                             {"family": .329, "base": 1.0})])
    head, rule, row = text.splitlines()
    assert head == ("| model | math (exact_match) | strings (exact_match) | facts (acc) | chat_ppl (perplexity) "
                    "| retention (family) | retention (base) |")
    assert rule == "|---" * 7 + "|"
    assert row == "| base | 14.0% | 19.0% | 11.0% | 3.35 | 32.9% | 100.0% |"
