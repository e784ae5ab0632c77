import json
import math

import pytest
import torch

from gptailor.evaluate import Evaluator
from gptailor.plan import Plan
from gptailor.stitch import Stitcher
from gptailor.tasks import Suite, load_task

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


@pytest.fixture(scope="module")
def model_tasks(tiny_family, tmp_path_factory):
    """Tasks whose right answers are known: targets taken from a member's own greedy output."""
    d = tmp_path_factory.mktemp("tasks")
    tok = tiny_family.tokenizer
    st = Stitcher(tiny_family)
    base = st.build(Plan.identity(4))
    math_model = st.build(Plan.identity(4, "math"), shared_from="math")  # the member's own model
    em, expected = [], []
    for i, p in enumerate(PROMPTS):
        ids = greedy(base, tok, p, 2)
        if not plain_chars(ids):
            continue
        right = tok.decode(ids)
        em.append({"prompt": p, "target": right if i % 2 == 0 else right[::-1] + "~"})
        expected.append(i % 2 == 0)
    math_only = []
    for p in PROMPTS:
        ids = greedy(math_model, tok, p, 4)
        if plain_chars(ids) and greedy(base, tok, p, 4) != ids:
            math_only.append({"prompt": p, "target": tok.decode(ids)})
    mc = [{"context": p, "choices": ["aa", "b", "zzz", p[-2:]], "answer": i % 4} for i, p in enumerate(PROMPTS)]
    ppl = [{"text": p * 2} for p in PROMPTS]
    nobody = [{"prompt": p, "target": "\n\n\n\n\n\n"} for p in PROMPTS[:3]]
    tasks = [load_task(write_jsonl(d / "em.jsonl", em), "exact_match"),
             load_task(write_jsonl(d / "mc.jsonl", mc), "multiple_choice"),
             load_task(write_jsonl(d / "ppl.jsonl", ppl), "perplexity"),
             load_task(write_jsonl(d / "math_only.jsonl", math_only), "exact_match"),
             load_task(write_jsonl(d / "nobody.jsonl", nobody), "exact_match")]
    return Suite("t", tasks), sum(expected) / len(expected), len(math_only)


def naive_loglik(model, tok, ctx, cont):
    c = tok(ctx)["input_ids"]
    t = tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([c + t])).logits[0].float(), -1)
    return sum(lp[len(c) + k - 1, x].item() for k, x in enumerate(t)), lp


def test_batched_scores_equal_one_by_one(tiny_family, model_tasks):
    suite, em_expected, _ = model_tasks
    ev = Evaluator(tiny_family, suite, batch_size=3)  # several batches, mixed lengths, padding
    plan = Plan.from_text("0:base 1:math 2:drop 3:merge(math=.5,code=.5)")
    model = Stitcher(tiny_family).build(plan)
    tok = tiny_family.tokenizer
    scores = ev.score_model(model)
    # multiple choice: argmax of summed log-likelihood, computed example by example
    mc = suite.tasks[1]
    hits = [max(range(4), key=lambda k: naive_loglik(model, tok, e["context"], e["choices"][k])[0]) == e["answer"]
            for e in mc.examples]
    assert scores["mc"] == pytest.approx(sum(hits) / len(hits))
    # perplexity: exp of mean token NLL over all texts
    nll = n = 0
    for e in suite.tasks[2].examples:
        ids = tok(e["text"])["input_ids"]
        ll, _ = naive_loglik(model, tok, e["text"][0], e["text"][1:])
        nll -= ll
        n += len(ids) - 1
    assert scores["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    # exact match on the base: exactly the examples whose target is the base's greedy output
    assert ev.score_model(Stitcher(tiny_family).build(Plan.identity(4)))["em"] == pytest.approx(em_expected)


def test_retention_references_and_zero_base(tiny_family, model_tasks):
    suite, _, n_math_only = model_tasks
    assert n_math_only >= 2
    ev = Evaluator(tiny_family, suite)
    refs = ev.references()
    assert refs["em"].member == "base" and refs["ppl"].member == "base"
    assert refs["math_only"].member == "math" and refs["math_only"].value > 0  # base scores zero there
    assert refs["nobody"].member == "none"
    assert ev.member_scores("math")["math_only"] == refs["math_only"].value
    res = ev.evaluate(Plan.identity(4, "math"))  # stitched: math's layers under the base's embeddings
    assert res.task_retention["math_only"] == pytest.approx(res.scores["math_only"] / refs["math_only"].value)
    assert res.task_retention["nobody"] is None
    valid = [v for v in res.task_retention.values() if v is not None]
    assert res.retention == pytest.approx(sum(valid) / len(valid))
    assert all(math.isfinite(v) for v in valid)
    base = ev.evaluate(Plan.identity(4))
    assert base.task_retention["em"] == pytest.approx(1.0) and base.task_retention["ppl"] == pytest.approx(1.0)
    assert base.task_retention["math_only"] == 0.0
    assert "math_only" in base.table() and "(math)" in base.table()


def test_fidelity_and_result_fields(tiny_family, model_tasks):
    suite, _, _ = model_tasks
    ev = Evaluator(tiny_family, suite)
    res = ev.evaluate(Plan.from_text("0:base 1:drop 2:math 3:drop"), fidelity=2)
    assert res.fidelity == 2 and res.kept_layers == 2 and res.n_layers == 4
    assert res.params == tiny_family.param_count(2)
    assert res.stitch_s > 0 and res.score_s > 0
    assert set(res.to_dict()) >= {"plan", "scores", "retention", "references", "task_retention"}
    assert ("base", 2) in ev._member_scores  # reference computed at the trial's fidelity, once
