"""The KL objective (issue #21 item 1): the top-k coarse-grained KL against torch's own full KL, and the
evaluator's per-task divergence against a plain transformers forward of the plan and of the reference."""
from __future__ import annotations

import math

import pytest
import torch

from gptailor import Evaluator, Plan
from gptailor.eval.divergence import KLProbe, topk_kl, topk_logprobs
from gptailor.eval.encoding import encode_pair, encode_text
from gptailor.eval.suite import load_suite
from gptailor.family.family import Family
from gptailor.search.optimizer import Search
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget

from conftest import make_tiny_family_with_suite

PLAN = "0:math 1:drop 2:code 3:merge(math=.5,code=.5) 4:drop 5:base"


def full_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row over the whole vocabulary, by torch's own kl_div."""
    return torch.nn.functional.kl_div(torch.log_softmax(q_logits, -1), torch.log_softmax(p_logits, -1),
                                      log_target=True, reduction="none").sum(-1)


def test_topk_kl_is_the_full_kl_when_k_covers_the_vocabulary_and_a_lower_bound_otherwise():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(7, 50, generator=g) * 3, torch.randn(7, 50, generator=g) * 3
    idx, lp = topk_logprobs(p, 50)
    assert torch.allclose(topk_kl(idx, lp, q), full_kl(p, q), atol=1e-5)
    for k in (1, 5, 20):
        idx, lp = topk_logprobs(p, k)
        part = topk_kl(idx, lp, q)
        assert (part >= -1e-6).all() and (part <= full_kl(p, q) + 1e-5).all()
    idx, lp = topk_logprobs(p, 5)
    assert torch.allclose(topk_kl(idx, lp, p), torch.zeros(7), atol=1e-5)  # zero against itself


@pytest.fixture(scope="module")
def fam_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("klfam")
    make_tiny_family_with_suite(d, n_layers=6, n_test=10)
    return d


@pytest.fixture(scope="module")
def ev(fam_dir):
    return Evaluator(Family.from_spec(fam_dir / "family.yaml"), load_suite(fam_dir / "tasks/suite.yaml"), kl_topk=8)


def _positions(model, task, ex, tok) -> list[torch.Tensor]:
    """The logits predicting each scored token of one example, from one plain unpadded forward per row."""
    if task.kind == "exact_match":
        rows = [encode_pair(tok, task, ex["prompt"], ex["target"])]
    elif task.kind == "multiple_choice":
        ctxs = ex["context"] if isinstance(ex["context"], list) else [ex["context"]] * len(ex["choices"])
        rows = [encode_pair(tok, task, c, ch) for c, ch in zip(ctxs, ex["choices"])]
    else:
        ids = encode_text(tok, ex["text"])
        rows = [(ids[:1], ids[1:])]
    out = []
    with torch.no_grad():
        for ctx, cont in rows:
            logits = model(input_ids=torch.tensor([ctx + cont])).logits[0].float()
            out.append(logits[len(ctx) - 1: len(ctx) + len(cont) - 1])
    return out


def test_each_task_s_kl_equals_a_plain_forward_of_the_plan_and_of_its_reference(ev):
    fidelity = 6
    refs = ev.references("test")
    res = ev.evaluate(Plan.from_text(PLAN, ev.family.name), fidelity, split="test", references=refs)
    kl = res.proxies["kl"]
    model = ev.stitcher.build(Plan.from_text(PLAN, ev.family.name))
    tok = ev.family.tokenizer
    checked = 0
    for task in ev.kl_tasks():
        member = refs.reference(res.definition, task.name).member
        member = member if member != "none" else "base"
        assert kl["reference"][task.name] == member
        ref_model = ev.stitcher.build(Plan.identity(ev.family.n_layers, member, ev.family.name), shared_from=member)
        per_example = []
        for ex in task.subset(fidelity, "test"):
            got = _positions(model, task, ex, tok)
            want = _positions(ref_model, task, ex, tok)
            kls = [topk_kl(*topk_logprobs(w, 8), g) for g, w in zip(got, want)]
            per_example.append(float(sum(k.sum() for k in kls) / sum(len(k) for k in kls)))
        assert kl["scores"][task.name] == pytest.approx(sum(per_example) / len(per_example), abs=1e-4)
        checked += 1
    assert checked >= 2 and kl["mean"] == pytest.approx(sum(kl["scores"].values()) / checked)
    assert res.objective_retention("kl") == pytest.approx(math.exp(-kl["mean"]))
    assert "KL to the references (top-8)" in res.table()


def test_a_reference_member_has_no_divergence_on_its_own_tasks_and_the_prefix_cache_changes_nothing(ev):
    refs = ev.references("test")
    d = refs.default_definition()
    for member in ev.family.member_names:
        res = ev.evaluate(Plan.identity(ev.family.n_layers, member, ev.family.name), 6, split="test", references=refs)
        for task, m in res.proxies["kl"]["reference"].items():
            if m == member:
                assert res.proxies["kl"]["scores"][task] == pytest.approx(0.0, abs=1e-5)
    plain = Evaluator(ev.family, ev.suite, prefix_cache=False, kl_topk=8)
    plain.use_references(refs)
    plan = Plan.from_text(PLAN, ev.family.name)
    a = ev.evaluate(plan, 6, split="test", definition=d).proxies["kl"]["scores"]
    b = plain.evaluate(plan, 6, split="test", definition=d).proxies["kl"]["scores"]
    assert a == pytest.approx(b, abs=1e-6)


def test_a_probe_refuses_batches_it_was_not_built_on():
    probe = KLProbe(4, reference=[])
    probe.start(2, "cpu")
    with pytest.raises(RuntimeError, match="built on other batches"):
        probe.feed(torch.zeros(3, 10), torch.tensor([0, 0, 1]))


def test_a_kl_search_tells_smac_one_minus_exp_of_minus_the_mean_kl(ev):
    settings = SearchSettings(method="smac", n_trials=5, min_fidelity=2, max_fidelity=8, seed=0, objective="kl")
    res = Search(Evaluator(ev.family, ev.suite, split="search"), Budget(remove_layers=2), settings).run()
    told = {(tuple(sorted(c.items())), b): cost for c, b, cost in res.runhistory}
    complete = [t for t in res.trials if t.status == "complete"]
    assert len(complete) == 5
    for t in complete:
        want = 1.0 - math.exp(-t.result.proxies["kl"]["mean"])
        assert told[(tuple(sorted(t.config.items())), t.budget)] == pytest.approx(want, abs=1e-9)


def test_a_kl_study_through_the_database_scores_the_divergence_in_every_trial(tmp_path, fam_dir, ev):
    """The worker wraps the evaluator (db.runs._Watched): the KL must still be scored, stored and read back,
    or every trial would cost SMAC a crash and a resume would re-tell nothing but crashes."""
    from db.runs import create_study, run_study
    from db.store import Store

    store = Store(f"sqlite:///{tmp_path / 'kl.db'}")
    plain = Evaluator(ev.family, ev.suite)  # kl_topk 0: the study's objective alone asks for the divergence
    settings = SearchSettings(method="smac", n_trials=4, min_fidelity=2, max_fidelity=8, seed=0, objective="kl")
    sid = create_study(store, str(fam_dir / "family.yaml"), "smac", Budget(remove_layers=2), settings, evaluator=plain)
    assert run_study(store, sid, evaluator=plain) == "finished"
    trials = [t for t in store.trials(sid) if t.status == "complete"]
    assert len(trials) == 4 and all(t.result.proxies["kl"]["mean"] > 0 for t in trials)
    assert plain.kl_topk == 0  # asked per evaluation, not left switched on in a shared evaluator
