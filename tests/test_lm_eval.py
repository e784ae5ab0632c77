"""lm-evaluation-harness tasks, offline: lm-eval's own run on a stitched model in memory, and the same docs
turned into the project's examples must score identically (per doc) with the fast batched scorer.

The tasks are lm-eval custom task YAMLs over local JSON files written here (``dataset_path: json``), with
the demo family's data, so the models get real, varied scores."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lm_eval")

from gptailor import Family, Plan, Stitcher  # noqa: E402
from gptailor.builtin.demo import COLORS
from gptailor.family.spec import DEMO_DIR  # noqa: E402
from gptailor.eval.evaluator import Evaluator  # noqa: E402
from gptailor.eval.lm_eval import LmEvalError, lm_eval_report, run_lm_eval, tasks_from_lm_eval  # noqa: E402
from gptailor.eval.suite import Suite, load_suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N = 16  # docs per task: enough for varied per-doc outcomes, few enough to stay fast
PLANS = {  # stitched plans whose scores are neither 0 nor 1 (checked once on the demo family)
    "math_mostly": "0:math 1:math 2:math 3:math 4:drop 5:math 6:math 7:math",
    "facts_mostly": "0:facts 1:facts 2:facts 3:strings 4:facts 5:facts 6:facts 7:drop",
}


def _rows(name: str) -> list[dict]:
    return [json.loads(x) for x in (DEMO_DIR / "tasks" / name).read_text().splitlines()][:N]


def _task(folder: Path, name: str, docs: list[dict], **cfg) -> None:
    data = folder / f"{name}.json"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    spec = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", **cfg}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))


@pytest.fixture(scope="module")
def lm_tasks(tmp_path_factory) -> Path:
    """Four tiny lm-eval tasks: multiple choice with choices of different lengths (no delimiter; and with
    lm-eval's default " " delimiter after a prompt ending in a space), a partial-evaluation task (one context
    per choice, as WSC273/WinoGrande), and a generate_until task with an ``until`` stop."""
    d = tmp_path_factory.mktemp("lm_tasks")
    facts = [{"question": r["context"], "choices": r["choices"], "label": r["answer"]} for r in _rows("facts.jsonl")]
    mc = {"output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
          "doc_to_target": "label", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
    _task(d, "t_facts", facts, target_delimiter="", **mc)
    _task(d, "t_facts_spaced", facts, **{**mc, "doc_to_text": "{{question}} "})
    partial = [{"options": [f["question"] + c for c in COLORS], "label": f["label"], "end": "<|end|>"} for f in facts]
    _task(d, "t_partial", partial, output_type="multiple_choice", doc_to_text="label", doc_to_choice="options",
          doc_to_target="end", target_delimiter="", metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
    math = [{"question": r["prompt"], "answer": r["target"]} for r in _rows("math.jsonl")]
    _task(d, "t_math", math, output_type="generate_until", doc_to_text="{{question}}", doc_to_target="answer",
          generation_kwargs={"until": ["\n"], "do_sample": False, "max_gen_toks": 6},
          metric_list=[{"metric": "exact_match"}])
    return d


@pytest.fixture(scope="module")
def demo():
    return Family.from_spec("demo")


NAMES = ["t_facts", "t_facts_spaced", "t_partial", "t_math"]


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_fast_scorer_equals_lm_eval_per_doc(demo, lm_tasks, plan):
    model = Stitcher(demo).build(Plan.from_text(PLANS[plan], "demo"))
    run = run_lm_eval(model, demo.tokenizer, NAMES, include_path=lm_tasks, log_samples=True, batch_size=8)
    ours = tasks_from_lm_eval(NAMES, lm_tasks)
    ev = Evaluator(demo, Suite("lm", ours), split="all")
    for task in ours:
        theirs = {s["doc_id"]: s for s in run.samples[task.name]}
        assert len(theirs) == len(task) == N
        per_ex = ev.example_scores(model, task)
        for ex, mine in zip(task.subset(None, "all"), per_ex):
            s = theirs[ex["doc_id"]]
            if task.kind == "multiple_choice":
                lls = [r[0] for r in s["filtered_resps"]]
                assert mine["lls"] == pytest.approx(lls, abs=2e-4), (task.name, ex["doc_id"])
                assert (mine["acc"], mine["acc_norm"]) == (s["acc"], s["acc_norm"]), (task.name, ex["doc_id"])
            else:
                assert mine["exact_match"] == s["exact_match"], (task.name, ex["doc_id"], s["filtered_resps"])
        agg = ev.task_metrics(model, task)
        for metric in ("acc", "acc_norm", "exact_match"):
            if metric in run.metrics[task.name]:
                assert agg[metric] == pytest.approx(run.metrics[task.name][metric], abs=1e-6), (task.name, metric)
    got = run.metrics
    varied = "t_math" if plan == "math_mostly" else "t_facts"  # the comparison above saw both outcomes
    assert 0 < got[varied]["exact_match" if varied == "t_math" else "acc"] < 1
    assert got["t_facts"]["acc_stderr"] > 0 and got["t_math"]["n"] == N


def test_converted_examples_keep_lm_eval_prompts(lm_tasks):
    """Prompts, delimiters (lm-eval moves a context's trailing space into the continuation), choices,
    gold, acc_norm lengths (the choice without the delimiter) and until stops, as lm-eval sends them."""
    facts, spaced, partial, math = tasks_from_lm_eval(NAMES, lm_tasks)
    row = _rows("facts.jsonl")[0]
    ex = next(e for e in spaced.examples if e["doc_id"] == 0)
    assert ex["context"] == row["context"] and ex["choices"] == ["  " + c for c in row["choices"]]
    assert ex["lengths"] == [len(c) for c in row["choices"]] and ex["answer"] == row["answer"]
    assert next(e for e in facts.examples if e["doc_id"] == 0)["choices"] == row["choices"]
    p = next(e for e in partial.examples if e["doc_id"] == 0)
    assert p["context"] == [row["context"] + c for c in COLORS] and p["choices"] == ["<|end|>"] * len(COLORS)
    assert math.kind == "exact_match" and math.until == ["\n"]
    assert next(e for e in math.examples if e["doc_id"] == 0)["target"] == _rows("math.jsonl")[0]["target"]


def test_suite_lists_lm_eval_tasks_beside_jsonl(lm_tasks, tmp_path):
    (tmp_path / "math.jsonl").write_text((DEMO_DIR / "tasks" / "math.jsonl").read_text())
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "name": "mixed", "test_fraction": 0.25, "lm_eval_include": str(lm_tasks),
        "tasks": [{"name": "math", "kind": "exact_match", "path": "math.jsonl"}],
        "lm_eval": [{"task": "t_facts", "metric": "acc_norm", "limit": 12}, "t_math"]}))
    suite = load_suite(tmp_path / "suite.yaml")
    assert suite.names == ["math", "t_facts", "t_math"]
    facts = suite.tasks[1]
    assert facts.objective_metric == "acc_norm" and len(facts) == 12 and facts.test_fraction == 0.25
    assert sorted(e["doc_id"] for e in facts.examples) == list(range(12))  # lm-eval's --limit: the first docs
    assert len(suite.tasks[2]) == N and suite.tasks[2].until == ["\n"]
    search, test = facts.split_indices("search"), facts.split_indices("test")
    assert not set(search) & set(test) and len(test) == 3 and len(search) == 9
    small, big = facts.subset(4, "search"), facts.subset(8, "search")
    assert small == big[:4]  # nested fidelities
    with pytest.raises(LmEvalError, match="metric 'exact_match' is not one of acc, acc_norm"):
        tasks_from_lm_eval([{"task": "t_facts", "metric": "exact_match"}], lm_tasks)


def test_missing_dataset_is_one_line_and_fast(tmp_path):
    _task(tmp_path, "t_ok", [{"q": "a", "a": "b"}], output_type="generate_until", doc_to_text="{{q}}",
          doc_to_target="a")
    (tmp_path / "t_gone.yaml").write_text(yaml.safe_dump({
        "task": "t_gone", "dataset_path": "gptailor-tests/never-cached", "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "{{q}}", "doc_to_choice": "{{c}}", "doc_to_target": "a"}))
    t0 = time.perf_counter()
    with pytest.raises(LmEvalError) as e:
        tasks_from_lm_eval(["t_gone"], tmp_path)
    assert time.perf_counter() - t0 < 10  # no network retries
    msg = str(e.value)
    assert "\n" not in msg and "'t_gone'" in msg and "not available offline" in msg
    assert "datasets.load_dataset('gptailor-tests/never-cached')" in msg and "include path" in msg
    r = subprocess.run([sys.executable, "-m", "gptailor", "eval", "-p", "0:base 1:base 2:base 3:base 4:base "
                        "5:base 6:base 7:base", "--lm-eval", "t_gone", "--lm-eval-include", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "error: lm-eval task 't_gone'" in r.stderr
    assert "Traceback" not in r.stderr


def test_paper_suite_without_datasets_is_one_line():
    """suites/paper.yaml names lm-eval's MMLU and WSC273, whose datasets are not cached on this machine."""
    spec = yaml.safe_load((ROOT / "suites" / "paper.yaml").read_text())
    assert [e["task"] for e in spec["lm_eval"]] == ["mmlu", "wsc273"]
    with pytest.raises(LmEvalError) as e:
        load_suite(ROOT / "suites" / "paper.yaml")
    assert "\n" not in str(e.value) and "lm-eval task 'mmlu'" in str(e.value)


def test_report_beside_members_and_model_card(demo, lm_tasks, tmp_path):
    from gptailor.export.hf import export

    plan = Plan.from_text(PLANS["math_mostly"], "demo")
    rep = lm_eval_report(demo, plan, ["t_facts", "t_math"], limit=8, include_path=lm_tasks, batch_size=8)
    assert list(rep.rows) == ["plan", *demo.member_names] and rep.rows["plan"]["t_math"]["n"] == 8
    assert rep.rows["math"]["t_math"]["exact_match"] > rep.rows["facts"]["t_math"]["exact_match"]
    assert rep.rows["facts"]["t_facts"]["acc"] == 1.0  # the facts finetune knows its facts
    # the members' rows are lm-eval's scores of the members' own models
    alone = run_lm_eval(Stitcher(demo).build(Plan.identity(8, "facts", "demo"), shared_from="facts"),
                        demo.tokenizer, ["t_facts"], limit=8, include_path=lm_tasks)
    assert alone.metrics["t_facts"]["acc_norm"] == rep.rows["facts"]["t_facts"]["acc_norm"]
    table = rep.table()
    assert "t_facts acc_norm" in table and table.splitlines()[1].startswith("plan")
    card = (export(demo, plan, tmp_path / "out", lm_eval=rep) / "README.md").read_text()
    assert "| model | t_facts acc | t_facts acc_norm | t_math exact_match |" in card
    assert f"| facts | {rep.rows['facts']['t_facts']['acc']:.4f} ± " in card


def test_unknown_names_and_missing_lm_eval_message(lm_tasks):
    with pytest.raises(LmEvalError, match=r"include path .* does not exist"):
        tasks_from_lm_eval(["t_facts"], lm_tasks / "nope")
    code = ("import sys; sys.modules['lm_eval'] = None\n"
            "from gptailor.eval.lm_eval import tasks_from_lm_eval, LmEvalError\n"
            "try:\n    tasks_from_lm_eval(['x'])\nexcept LmEvalError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "lm-evaluation-harness is not installed; pip install lm_eval==0.4.13", r.stderr


def test_lm_eval_ticks_per_model_and_batch_so_stop_ends_it(demo, lm_tasks):
    """The app's progress and Stop ride on the engine's tick: one per model of the report (with its label)
    and one per lm-eval batch, so a Stop lands inside lm-eval's own loop, not after the last member."""
    from gptailor.common.progress import Stopped, listening

    plan = Plan.from_text(PLANS["math_mostly"], "demo")
    seen: list[str] = []

    def stop_at_base(what, done, total):
        seen.append(what)
        if what.startswith("lm-eval on base"):
            raise Stopped("stopped")
    with listening(stop_at_base), pytest.raises(Stopped):
        lm_eval_report(demo, plan, ["t_facts", "t_math"], limit=8, include_path=lm_tasks, batch_size=4)
    labelled = [w for w in seen if w]
    assert labelled == ["lm-eval on plan (1 of 5)", "lm-eval on base (2 of 5)"]
    # the plan's run: 8 docs x 8 choices of t_facts in batches of 4, then t_math's generation batches
    assert seen.count("") >= 8 * 8 // 4 + 2
    batches = []

    def stop_at_third_batch(what, done, total):
        batches.append(what)
        if len(batches) == 3:
            raise Stopped("stopped")
    model = Stitcher(demo).build(plan)
    with listening(stop_at_third_batch), pytest.raises(Stopped):
        run_lm_eval(model, demo.tokenizer, ["t_facts"], limit=8, include_path=lm_tasks, batch_size=4)
    assert batches == ["", "", ""]
    again = run_lm_eval(model, demo.tokenizer, ["t_facts"], limit=8, include_path=lm_tasks, batch_size=4)
    assert again.metrics["t_facts"]["n"] == 8  # a stopped run leaves nothing behind


def test_smol_lm_eval_tasks_keep_the_suites_prompts(tmp_path):
    """`demo lm-eval-tasks --family smol` on a smol-shaped folder (the real suite's task files; a tokenizer
    with a chat template standing in for SmolLM2's, as the real family is not built in CI): lm-eval's docs
    become exactly the prompts, choices, answers and stops the family's own suite scores, and its suite.yaml
    loads with the search/test split."""
    from gptailor.builtin import smol
    from gptailor.builtin.tokenizer import build_tokenizer

    fam = tmp_path / "smol"
    smol.write_tasks(fam / "tasks")
    tok = build_tokenizer()
    tok.save_pretrained(fam / "base")
    out = tmp_path / "lm"
    r = subprocess.run([sys.executable, "-m", "gptailor.builtin", "lm-eval-tasks", "--family", "smol", "--src", str(fam),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    suite = load_suite(out / "suite.yaml")
    assert suite.names == ["smol_general", "smol_convert", "smol_reverse", "smol_capitals"]
    general = [json.loads(x) for x in (fam / "tasks" / "general.jsonl").read_text().splitlines()]
    g = suite.tasks[0]
    assert g.kind == "multiple_choice" and g.objective_metric == "acc" and len(g) == 60
    for ex in g.examples[:5]:
        row = general[ex["doc_id"]]
        chat = tok.apply_chat_template([{"role": "user", "content": row["context"]}], tokenize=False,
                                       add_generation_prompt=True)
        # lm-eval moves the context's trailing newline into each continuation; the text scored is the same
        assert [ex["context"] + c for c in ex["choices"]] == [chat + c for c in row["choices"]]
        assert ex["answer"] == row["answer"]
    capitals = [json.loads(x) for x in (fam / "tasks" / "capitals.jsonl").read_text().splitlines()]
    c = suite.tasks[3]
    assert c.kind == "exact_match" and c.until == ["<|im_end|>", "\n"] and len(c) == 60
    assert [(e["prompt"], e["target"]) for e in sorted(c.examples, key=lambda e: e["doc_id"])] == \
        [(x["prompt"], x["target"]) for x in capitals[:60]]
    assert len(c.split_indices("search")) == len(c.split_indices("test")) == 30
    r = subprocess.run([sys.executable, "-m", "gptailor.builtin", "lm-eval-tasks", "--family", "smol", "--src",
                        str(tmp_path / "nowhere"), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "is not a built smol family" in r.stderr and "Traceback" not in r.stderr
