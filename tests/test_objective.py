"""The continuous objective (issue #21): ``loglik`` (exact match), ``gold_prob`` (multiple choice) and
perplexity, from the same forward as the accuracy, checked against a plain transformers forward; retention
against them; a search told ``--objective loglik`` minimises exactly 1 - that retention, stored and resumed."""
from __future__ import annotations

import math

import pytest
import torch

from gptailor import Evaluator, Plan
from gptailor.eval.metrics import METRICS, continuous_metric, goodness, metrics_for
from gptailor.eval.suite import load_suite
from gptailor.family.family import Family
from gptailor.search.optimizer import Search
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget
from gptailor.common.limits import SettingsError

from conftest import loglik_of_ids, make_tiny_family_with_suite

PLAN = "0:math 1:drop 2:code 3:merge(math=.5,code=.5) 4:drop 5:base"


@pytest.fixture(scope="module")
def fam_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("objfam")
    make_tiny_family_with_suite(d, n_layers=6, n_test=12)
    return d


@pytest.fixture(scope="module")
def ev(fam_dir):
    return Evaluator(Family.from_spec(fam_dir / "family.yaml"), load_suite(fam_dir / "tasks/suite.yaml"))


def naive(model, ids_ctx: list[int], ids_cont: list[int]) -> tuple[float, int]:
    """Summed log-probability of ``ids_cont`` after ``ids_ctx`` (``conftest.loglik_of_ids``) and its token count."""
    return loglik_of_ids(model, ids_ctx, ids_cont)[0], len(ids_cont)


def test_registry_knows_the_proxies():
    assert [continuous_metric(k) for k in ("exact_match", "multiple_choice", "perplexity")] == \
        ["loglik", "gold_prob", "perplexity"]
    assert METRICS["loglik"].higher_is_better and METRICS["gold_prob"].higher_is_better
    assert goodness("loglik", math.log(0.25)) == pytest.approx(0.25)  # a per-token probability, like 1/ppl
    assert goodness("loglik", -math.inf) == 0.0 and goodness("gold_prob", 0.4) == 0.4
    assert "loglik" not in metrics_for("exact_match") and "perplexity" in metrics_for("perplexity")


def test_proxies_equal_a_plain_forward(ev):
    """Per example, ``loglik`` = mean per-token target log-prob and ``gold_prob`` = softmax of the choices'
    summed log-likelihoods at the gold answer, computed here from a plain forward of the stitched model."""
    from gptailor.eval.encoding import encode_pair

    model = ev.stitcher.build(Plan.from_text(PLAN, ev.family.name))
    tok = ev.family.tokenizer
    kinds = {t.kind for t in ev.suite}
    assert {"exact_match", "multiple_choice"} <= kinds
    for task in ev.suite:
        if task.kind == "perplexity" or task.filter:
            continue
        got = ev.example_scores(model, task, split="test")
        examples = task.subset(None, "test")
        assert len(got) == len(examples) > 0
        for g, ex in zip(got, examples):
            if task.kind == "exact_match":
                s, n = naive(model, *encode_pair(tok, task, ex["prompt"], ex["target"]))
                assert g["loglik"] == pytest.approx(s / n, abs=1e-4)
            else:
                ctxs = ex["context"] if isinstance(ex["context"], list) else [ex["context"]] * len(ex["choices"])
                lls = torch.tensor([naive(model, *encode_pair(tok, task, c, ch))[0]
                                    for c, ch in zip(ctxs, ex["choices"])], dtype=torch.float64)
                assert g["gold_prob"] == pytest.approx(float(torch.softmax(lls, 0)[ex["answer"]]), abs=1e-4)
        means = ev.task_metrics(model, task, split="test")
        name = continuous_metric(task.kind)
        assert means[name] == pytest.approx(sum(g[name] for g in got) / len(got), abs=1e-9)


def test_proxy_retention_is_a_ratio_of_goodness_and_the_prefix_cache_changes_nothing(fam_dir, ev):
    plan = Plan.from_text(PLAN, ev.family.name)
    res = ev.evaluate(plan, 6, split="test")
    refs = ev.references("test")
    p = res.proxies["loglik"]
    for d in ("family", "base"):
        want = []
        for t in ev.suite:
            m = p["metrics"][t.name]
            ref_members = refs.scores if d == "family" else {"base": refs.scores["base"]}
            g_ref = max(goodness(m, refs.proxy[k][t.name]) for k in ref_members)
            r = goodness(m, p["scores"][t.name]) / g_ref
            want.append(min(1.0, r) if d == "family" else r)
        assert p["retentions"][d] == pytest.approx(sum(want) / len(want), rel=1e-9)
        assert res.objective_retention("loglik", d) == p["retentions"][d]
    assert res.objective_retention("accuracy") == res.retention  # accuracy and both definitions stay
    assert set(res.retentions) == {"family", "base"}
    plain = Evaluator(ev.family, ev.suite, prefix_cache=False)
    plain.use_references(refs)
    again = plain.evaluate(plan, 6, split="test")
    assert again.proxies["loglik"]["scores"] == pytest.approx(p["scores"], abs=1e-6)
    assert "loglik retention" in res.table()


def test_a_loglik_search_tells_smac_the_loglik_cost(ev):
    settings = SearchSettings(method="smac", n_trials=6, min_fidelity=2, max_fidelity=8, seed=0, objective="loglik")
    res = Search(Evaluator(ev.family, ev.suite, split="search"), Budget(remove_layers=2), settings).run()
    told = {(tuple(sorted(c.items())), b): cost for c, b, cost in res.runhistory}
    complete = [t for t in res.trials if t.status == "complete"]
    assert len(complete) == 6
    differs = False
    for t in complete:
        want = 1.0 - t.result.proxies["loglik"]["retentions"][t.result.definition]
        assert told[(tuple(sorted(t.config.items())), t.budget)] == pytest.approx(want, abs=1e-9)
        differs |= abs(want - (1.0 - t.result.retention)) > 1e-6
    assert differs  # the loglik cost, not accuracy's
    with pytest.raises(SettingsError, match="objective is one of accuracy, loglik, kl; got 'kld'"):
        SearchSettings(objective="kld").check()


def test_a_stored_loglik_study_keeps_its_proxies(tmp_path, fam_dir, ev):
    """Through a real SQLite store: the trials read back with their proxy retentions (what a resume
    re-tells SMAC), and the study's best retentions stay the two definitions."""
    from db.runs import create_study, run_study
    from db.store import Store

    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    settings = SearchSettings(method="smac", n_trials=4, min_fidelity=2, max_fidelity=8, seed=0, objective="loglik")
    sid = create_study(store, str(fam_dir / "family.yaml"), "smac", Budget(remove_layers=2), settings, evaluator=ev)
    assert run_study(store, sid, evaluator=ev) == "finished"
    trials = [t for t in store.trials(sid) if t.status == "complete"]
    assert trials and all(0 < t.result.objective_retention("loglik") for t in trials)
    assert set(store.study(sid)["best_retentions"]) == {"family", "base"}
    assert store.study(sid)["settings"]["objective"] == "loglik"


def test_the_cli_offers_the_objective(capsys):
    from db.cli import main

    with pytest.raises(SystemExit) as e:
        main(["search", "-f", "demo", "--remove-layers", "2", "--objective", "kld"])
    assert e.value.code == 2 and "invalid choice: 'kld'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert "--objective {accuracy,loglik,kl}" in capsys.readouterr().out


def test_a_study_stored_before_the_choice_resumes_on_accuracy():
    """Settings stored before they named an objective were searched on accuracy: a resume re-tells those
    costs, whatever a new study's default is."""
    from gptailor.eval.results import DEFAULT_OBJECTIVE

    assert SearchSettings.from_dict({"method": "smac", "n_trials": 5}).objective == "accuracy"
    assert SearchSettings.from_dict({"objective": "kl"}).objective == "kl"
    assert SearchSettings().objective == DEFAULT_OBJECTIVE
