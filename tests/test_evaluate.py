import copy
import json
import math

import pytest

from conftest import loglik_of_ids
from gptailor.eval.evaluator import Evaluator
from gptailor.plan import Plan
from gptailor.stitch import Stitcher
from gptailor.eval.suite import Suite
from gptailor.eval.tasks import load_task

PROMPTS = ["hello w", "ab", "the quick brown f", "x=1;y", "abcabcab", "lorem ipsum dolor s", "zz", "12+34="]


def greedy(model, tok, prompt, n):
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def plain_chars(ids):
    return all(i >= 7 for i in ids)  # no special tokens, so decode/encode round-trips


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def greedy_text(model, tok, prompt, n):
    return tok.decode(greedy(model, tok, prompt, n), skip_special_tokens=False)


def generated_answer(model, tok, prompt, n, until):
    """lm-eval's exact-match answer, computed independently: greedy generation cut at the first stop."""
    ids = greedy(model, tok, prompt, n)
    if tok.eos_token_id in ids:
        ids = ids[: ids.index(tok.eos_token_id)]
    text = tok.decode(ids)
    for u in until:
        text = text.split(u, 1)[0]
    return text


def stop_examples(model, tok, prompts, k, wrong_every=0):
    """Targets = a model's first k greedy characters; ``until`` = the characters it writes next, so greedy
    generation answers exactly the target (every ``wrong_every``-th example gets a wrong target instead)."""
    rows, stops = [], set()
    for i, p in enumerate(prompts):
        ids = greedy(model, tok, p, k + 1)
        if not plain_chars(ids):
            continue
        text = tok.decode(ids)
        rows.append((p, text[:k], text[k]))
    stops = {c for _, _, c in rows}
    ex = [{"prompt": p, "target": t if not (wrong_every and i % wrong_every == 1) else t[::-1] + "~"}
          for i, (p, t, _) in enumerate(rows) if not any(c in t for c in stops)]
    return ex, sorted(stops)


@pytest.fixture(scope="module")
def model_tasks(tiny_family, tmp_path_factory):
    """Tasks whose right answers are known: targets taken from a member's own greedy output."""
    d = tmp_path_factory.mktemp("tasks")
    tok = tiny_family.tokenizer
    st = Stitcher(tiny_family)
    base = st.build(Plan.identity(4))
    math_model = st.build(Plan.identity(4, "math"), shared_from="math")  # the member's own model
    em, em_until = stop_examples(base, tok, PROMPTS, 2, wrong_every=2)
    more = PROMPTS + ["qwerty", "mnop", "jump over", "42+17=", "sky is", "red green b", "uvwx", "k", "tt", "pq"]
    math_only, math_until = stop_examples(math_model, tok, more, 3)
    math_only = [e for e in math_only if generated_answer(base, tok, e["prompt"], 4, math_until) != e["target"]]
    mc = [{"context": p, "choices": ["aa", "b", "zzz", p[-2:]], "answer": i % 4} for i, p in enumerate(PROMPTS)]
    ppl = [{"text": p * 2} for p in PROMPTS]
    nobody = [{"prompt": p, "target": "~~~~~~"} for p in PROMPTS[:3]]
    tasks = [load_task(write_jsonl(d / "em.jsonl", em), "exact_match"),
             load_task(write_jsonl(d / "mc.jsonl", mc), "multiple_choice"),
             load_task(write_jsonl(d / "ppl.jsonl", ppl), "perplexity"),
             load_task(write_jsonl(d / "math_only.jsonl", math_only), "exact_match"),
             load_task(write_jsonl(d / "nobody.jsonl", nobody), "exact_match")]
    tasks[0].until, tasks[3].until, tasks[4].until = em_until, math_until, ["\n"]
    expected = [generated_answer(base, tok, e["prompt"], 4, em_until) == e["target"] for e in em]
    return Suite("t", tasks), sum(expected) / len(expected), len(math_only)


def naive_loglik(model, tok, ctx, cont):
    """The continuation tokenised on its own (the encoding of exact match and perplexity)."""
    return loglik_of_ids(model, tok(ctx)["input_ids"], tok(cont, add_special_tokens=False)["input_ids"])


def test_batched_scores_equal_one_by_one(tiny_family, model_tasks):
    suite, em_expected, _ = model_tasks
    ev = Evaluator(tiny_family, suite, batch_size=3, split="all")  # several batches, mixed lengths, padding
    plan = Plan.from_text("0:base 1:math 2:drop 3:merge(math=.5,code=.5)")
    model = Stitcher(tiny_family).build(plan)
    tok = tiny_family.tokenizer
    scores = ev.score_model(model)
    # multiple choice: argmax of summed log-likelihood, computed example by example
    mc = suite.tasks[1]
    hits = [max(range(4), key=lambda k: naive_loglik(model, tok, e["context"], e["choices"][k])[0]) == e["answer"]
            for e in mc.examples]
    assert scores["mc"] == pytest.approx(sum(hits) / len(hits))
    # acc_norm (lm-eval): log-likelihood divided by the choice's length in characters
    norm = [max(range(4), key=lambda k: naive_loglik(model, tok, e["context"], e["choices"][k])[0]
                / len(e["choices"][k])) == e["answer"] for e in mc.examples]
    details = ev.model_details(model)
    assert details["mc"]["acc_norm"] == pytest.approx(sum(norm) / len(norm))
    assert details["mc"]["acc"] == scores["mc"]
    # perplexity: exp of mean token NLL over all texts
    nll = n = 0
    for e in suite.tasks[2].examples:
        ids = tok(e["text"])["input_ids"]
        ll, _ = naive_loglik(model, tok, e["text"][0], e["text"][1:])
        nll -= ll
        n += len(ids) - 1
    assert scores["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    # exact match on the base: exactly the examples whose greedy answer, cut at a stop, is the target
    assert 0 < em_expected < 1
    assert ev.score_model(Stitcher(tiny_family).build(Plan.identity(4)))["em"] == pytest.approx(em_expected)


def test_exact_match_is_the_whole_answer_up_to_the_stop(tiny_family, tmp_path):
    """A model that goes on past the target ("65" then "1") is wrong, as in lm-eval's ``until``."""
    tok = tiny_family.tokenizer
    base = Stitcher(tiny_family).build(Plan.identity(4))
    rows = []
    for p in PROMPTS:
        ids = greedy(base, tok, p, 3)
        if plain_chars(ids):
            rows.append({"prompt": p, "target": tok.decode(ids)[:2], "next": tok.decode(ids)[2]})
    assert len(rows) >= 4
    task = load_task(write_jsonl(tmp_path / "prefix.jsonl", [{"prompt": r["prompt"], "target": r["target"]}
                                                             for r in rows]), "exact_match")
    task.until = ["\n"]
    ev = Evaluator(tiny_family, Suite("p", [task]), split="all")
    independent = [generated_answer(base, tok, r["prompt"], 4, ["\n"]) == r["target"] for r in rows]
    assert ev.score_model(base)["prefix"] == pytest.approx(sum(independent) / len(rows))
    assert sum(independent) < len(rows)  # the model continues past these targets: a prefix match would say 100%
    task.until = sorted({r["next"] for r in rows} - {c for r in rows for c in r["target"]}) or ["\n"]
    ev2 = Evaluator(tiny_family, Suite("p", [task]), split="all")
    independent = [generated_answer(base, tok, r["prompt"], 4, task.until) == r["target"] for r in rows]
    assert ev2.score_model(base)["prefix"] == pytest.approx(sum(independent) / len(rows)) and any(independent)


def test_filtered_generation_matches_the_teacher_forced_path(tiny_family, model_tasks):
    """An identity regex filter scores by real batched generation: it must agree with the one-pass check."""
    suite, em_expected, _ = model_tasks
    em = suite.tasks[0]
    gen = copy.copy(em)
    gen.name, gen.filter = "em_gen", {"regex": "(.*)"}
    ev = Evaluator(tiny_family, Suite("g", [em, gen]), batch_size=3, split="all")
    scores = ev.score_model(Stitcher(tiny_family).build(Plan.identity(4)))
    assert scores["em_gen"] == pytest.approx(scores["em"]) == pytest.approx(em_expected)
    contains = copy.copy(em)
    contains.name, contains.filter = "em_has", {"contains": True}
    assert Evaluator(tiny_family, Suite("c", [contains]), split="all").score_model(
        Stitcher(tiny_family).build(Plan.identity(4)))["em_has"] >= em_expected


def test_filter_and_split_helpers():
    from gptailor.eval.metrics import apply_filter

    assert apply_filter("The answer is 42.", "42", {"regex": r"answer is (\d+)"})
    assert not apply_filter("no number here", "42", {"regex": r"answer is (\d+)"})
    assert apply_filter("The capital of France is Paris.", "Paris", {"contains": True})
    assert not apply_filter("651", "65", None) and apply_filter(" 65 ", "65", None)


def test_retention_references_and_zero_base(tiny_family, model_tasks):
    suite, _, n_math_only = model_tasks
    assert n_math_only >= 2
    ev = Evaluator(tiny_family, suite, split="all")
    refs = ev.references()
    assert refs.reference("base", "em").member == "base" and refs.reference("base", "ppl").member == "base"
    fam_ref = refs.reference("family", "math_only")
    assert fam_ref.member == "math" and fam_ref.value > 0  # only the math finetune can do it
    assert refs.reference("base", "math_only").member == "none"  # the base scores zero: no base retention
    assert refs.reference("family", "nobody").member == "none"
    assert ev.member_scores("math")["math_only"] == fam_ref.value
    assert refs.default_definition() == "family"  # a finetune holds a skill the base lacks
    res = ev.evaluate(Plan.identity(4, "math"))  # stitched: math's layers under the base's embeddings
    fam, base_def = res.task_retentions["family"], res.task_retentions["base"]
    assert fam["math_only"] == pytest.approx(min(1.0, res.scores["math_only"] / fam_ref.value))
    assert base_def["math_only"] is None and fam["nobody"] is None
    for d in ("family", "base"):
        valid = [v for v in res.task_retentions[d].values() if v is not None]
        assert res.retentions[d] == pytest.approx(sum(valid) / len(valid))
        assert all(math.isfinite(v) for v in valid)
    assert all(v <= 1.0 for v in fam.values() if v is not None)  # family retention is capped
    assert res.definition == "family" and res.retention == res.retentions["family"]
    base = ev.evaluate(Plan.identity(4), definition="base")
    assert base.task_retention["em"] == pytest.approx(1.0) and base.task_retention["ppl"] == pytest.approx(1.0)
    assert base.task_retentions["family"]["math_only"] == 0.0
    assert "math_only" in base.table() and "(base)" in base.table()


def test_references_are_fixed_and_do_not_depend_on_fidelity(tiny_family, model_tasks):
    suite, _, _ = model_tasks
    ev = Evaluator(tiny_family, suite, split="all")
    plan = Plan.from_text("0:base 1:drop 2:math 3:drop")
    low, full = ev.evaluate(plan, fidelity=2), ev.evaluate(plan)
    assert low.references == full.references  # the same normaliser at every fidelity
    for t, r in low.task_retentions["family"].items():
        ref = ev.references().reference("family", t)
        if r is not None and suite.tasks[[x.name for x in suite].index(t)].kind != "perplexity":
            assert r == pytest.approx(min(1.0, low.scores[t] / ref.value))


def test_a_suite_nobody_scores_on_is_refused(tiny_family, tmp_path):
    from gptailor.eval.tasks import TaskError

    task = load_task(write_jsonl(tmp_path / "zero.jsonl", [{"prompt": p, "target": "~~~~"} for p in PROMPTS]),
                     "exact_match")
    with pytest.raises(TaskError, match="no member .* scores above zero.*chat_template"):
        Evaluator(tiny_family, Suite("z", [task]), split="all").references()


def test_splits_are_disjoint_and_nested(tiny_family, model_tasks):
    suite, _, _ = model_tasks
    for t in suite:
        search, test = t.split_indices("search"), t.split_indices("test")
        assert not set(search) & set(test) and sorted(search + test) == sorted(t.split_indices("all"))
        assert t.subset(2, "search") == [t.examples[i] for i in search[:2]]
    ev = Evaluator(tiny_family, suite)
    assert ev.evaluate(Plan.identity(4)).split == "test"


def test_fidelity_and_result_fields(tiny_family, model_tasks):
    suite, _, _ = model_tasks
    ev = Evaluator(tiny_family, suite, split="all")
    res = ev.evaluate(Plan.from_text("0:base 1:drop 2:math 3:drop"), fidelity=2)
    assert res.fidelity == 2 and res.kept_layers == 2 and res.n_layers == 4
    assert res.params == tiny_family.param_count(2)
    assert res.stitch_s > 0 and res.score_s > 0
    assert set(res.to_dict()) >= {"plan", "scores", "retention", "references", "task_retention", "retentions"}
    assert res.details["mc"]["n"] == 2 and "stderr" in res.details["em"]
