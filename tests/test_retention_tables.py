"""Both retention definitions in every table of the real app (#9 item 2): the Dashboard's trial table,
best-trial summary and selected trial, the Search tab's studies, Compare, Evaluate and the Editor show
`family` and `base` retention side by side, the study's own marked in the header, and every number equals
a hand computation (score / reference, from the references the app stored) made here.

Two real studies (a random search and a last_n baseline on the demo family) are run in this process on
the app's database before the server starts (conftest's ``demo_studies_app``); the server reads them as any
page would."""
import json
import math
import re

import pytest

from test_app import rows_of
from test_compare_noise_browser import objective_by_hand


def goodness(kind: str, v: float) -> float:
    if kind == "perplexity":
        return 1.0 / v if v > 0 and math.isfinite(v) else 0.0
    return v


def by_hand(scores: dict, refs: dict) -> dict[str, dict]:
    """family: score / the best member's score per task, capped at 1; base: score / the base's score, none
    where the base is near zero (below 0.05, accuracy tasks); means over the tasks that have one."""
    out = {"family": {}, "base": {}}
    for t, v in scores.items():
        kind = refs["kinds"][t]
        g = goodness(kind, v)
        best = max(goodness(kind, member[t]) for member in refs["scores"].values())
        out["family"][t] = min(1.0, g / best) if best > 0 else None
        gb = goodness(kind, refs["scores"]["base"][t])
        out["base"][t] = g / gb if gb > 0 and (kind == "perplexity" or gb >= refs.get("near_zero", 0.05)) else None
    means = {d: sum(x for x in r.values() if x is not None) / sum(1 for x in r.values() if x is not None)
             for d, r in out.items()}
    return {"tasks": out, "means": means}


# A small fixed case computed by hand, independent of both the engine and ``by_hand``:
#   task  kind             base   math   plan | family: best member        | base: / base's score
#   add   exact_match      0.5    0.8    0.9  | 0.9 / 0.8 = 1.125 -> 1.0   | 0.9 / 0.5 = 1.8
#   mc    multiple_choice  0.6    0.3    0.6  | 0.6 / 0.6 = 1.0 (base best) | 0.6 / 0.6 = 1.0
#   ppl   perplexity       20     25     40   | (1/40) / (1/20) = 0.5      | (1/40) / (1/20) = 0.5
#   rare  exact_match      0.02   0.4    0.1  | 0.1 / 0.4 = 0.25           | none: base 0.02 < 0.05
#   means: family (1.0 + 1.0 + 0.5 + 0.25) / 4 = 0.6875; base (1.8 + 1.0 + 0.5) / 3 = 1.1
# Which definition applies when the study says ``auto``: family, as math is 20x the base on ``rare``
# (>= 2x); without ``rare`` no finetune doubles the base anywhere (0.8 < 2 x 0.5), so base.
FIXED_REFS = {"split": "search", "near_zero": 0.05,
              "kinds": {"add": "exact_match", "mc": "multiple_choice", "ppl": "perplexity", "rare": "exact_match"},
              "scores": {"base": {"add": 0.5, "mc": 0.6, "ppl": 20.0, "rare": 0.02},
                         "math": {"add": 0.8, "mc": 0.3, "ppl": 25.0, "rare": 0.4}}}
FIXED_SCORES = {"add": 0.9, "mc": 0.6, "ppl": 40.0, "rare": 0.1}
FIXED_TASKS = {"family": {"add": 1.0, "mc": 1.0, "ppl": 0.5, "rare": 0.25},
               "base": {"add": 1.8, "mc": 1.0, "ppl": 0.5, "rare": None}}
FIXED_MEANS = {"family": 0.6875, "base": 1.1}


def test_fixed_case_by_hand():
    """The engine's retentions, the rule for which definition applies, and this file's ``by_hand`` (which the
    app tests below compare against) all equal numbers worked out by hand above."""
    from gptailor.eval.results import References, applicable_definition

    refs = References.from_dict(FIXED_REFS)
    means, tasks = refs.retentions(FIXED_SCORES, FIXED_REFS["kinds"])
    for d in ("family", "base"):
        assert means[d] == pytest.approx(FIXED_MEANS[d])
        assert tasks[d] == pytest.approx(FIXED_TASKS[d])
    hand = by_hand(FIXED_SCORES, FIXED_REFS)
    assert hand["means"] == pytest.approx(FIXED_MEANS)
    assert all(hand["tasks"][d] == pytest.approx(FIXED_TASKS[d]) for d in FIXED_TASKS)
    assert [refs.reference("family", t).member for t in FIXED_SCORES] == ["math", "base", "base", "math"]
    assert refs.reference("base", "rare").member == "none"

    without_rare = References.from_dict({**FIXED_REFS, "kinds": {k: v for k, v in FIXED_REFS["kinds"].items()
                                                                 if k != "rare"}})
    assert applicable_definition(setting="auto", refs=refs) == "family"
    assert applicable_definition(setting="auto", refs=without_rare) == "base"
    assert applicable_definition(setting="base", refs=refs) == "base"  # an explicit setting beats the default
    assert applicable_definition(fixed="base", setting="family") == "base"  # fixed with the study wins
    assert applicable_definition() == "family"  # nothing stored: what a retention meant before
    assert applicable_definition(setting="auto", refs=lambda: without_rare) == "base"  # scored only when needed
    assert applicable_definition(fixed="family", refs=lambda: pytest.fail("references scored needlessly")) == "family"
    with pytest.raises(ValueError, match="auto, family, base"):
        applicable_definition(setting="mean")


def grid(value) -> tuple[list[str], list[list]]:
    """(headers, rows) of a Dataframe as gradio_client returns it (a value or an update)."""
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    return value["headers"], value["data"]


def interval_of(cell: str) -> tuple[float, float, float]:
    """'25.3 [21.0, 29.9]' -> (25.3, 21.0, 29.9): a retention as the tables show it with its 95% interval."""
    value, _, rest = cell.partition(" [")
    lo, hi = rest.rstrip("]").split(", ")
    return float(value), float(lo), float(hi)


def col(headers: list[str], start: str) -> int:
    return next(i for i, h in enumerate(headers) if h.startswith(start))


@pytest.fixture(scope="module")
def app(demo_studies_app):
    return demo_studies_app


def test_dashboard_tables_show_both_definitions(app):
    from ui.dashboard_tab import OUTPUTS

    client, st, ids, _, _ = app
    out = dict(zip(OUTPUTS[1:], client.predict(list(ids), None, None, api_name="/dashboard")))
    studies = {s["id"]: s for s in st.studies()}
    definition = studies[ids[0]]["refs"]["definition"]
    other = "base" if definition == "family" else "family"
    head, rows = grid(out["table"])
    assert f"{definition} retention % (objective)" in head and f"{other} retention %" in head
    fam, base, obj = col(head, "family retention"), col(head, "base retention"), head.index("objective")
    trials = {(s, t.number): t for s in ids for t in st.trials(s)}
    assert len(rows) == len(trials) == 6
    for r in rows:
        t = trials[(int(r[0]), int(r[1]))]
        want = by_hand(t.result.scores, studies[int(r[0])]["refs"])["means"]
        assert r[fam] == pytest.approx(100 * want["family"], abs=0.006)
        assert r[base] == pytest.approx(100 * want["base"], abs=0.006)
        assert r[obj] == definition
    assert any(abs(r[fam] - r[base]) > 1 for r in rows)  # the two definitions really differ on the demo

    # the best-trial summary: the search split's best by the one rule, and its test-split report
    head, rows = grid(out["summary"])
    assert f"{definition} % search [95%] (objective)" in head
    for r in rows:
        s = studies[r[0]]
        best = st.trials(s["id"])[r[head.index("best trial")]]
        assert best.number == s["best_trial"]
        want = by_hand(best.result.scores, s["refs"])["means"]
        tasks = by_hand(best.result.scores, s["refs"])["tasks"]
        sizes = {"math": 100, "strings": 100, "facts": 100, "chat_ppl": 60}  # the demo suite's search split
        n = {t: min(best.fidelity or sizes[t], sizes[t]) for t in best.result.scores}  # the first N examples
        for d in ("family", "base"):  # the search split's number with its 95% interval, Wilson by hand
            value, lo, hi = interval_of(r[col(head, f"{d} % search")])
            assert value == pytest.approx(100 * want[d], abs=0.06)
            m, wlo, whi, _se = objective_by_hand({"definition": d, "task_retentions": tasks, "scores":
                                                  best.result.scores, "details": {t: {"n": k} for t, k in n.items()}},
                                                 s["refs"])
            assert [lo, hi] == pytest.approx([100 * wlo, 100 * whi], abs=0.06) and hi > lo
        rep = s["report"]
        for d in ("family", "base"):  # the test split's number with its 95% interval, as Compare shows it
            shown = r[col(head, f"{d} % test")]
            value, lo, hi = interval_of(shown)
            assert value == round(100 * rep["retentions"][d], 1) and lo <= value <= hi and hi > lo
            assert s["best_split"] == "search" and r[head.index("best from")].startswith("search split, fidelity")

    # the selected trial (the best of the shown studies): its confirmation and per-task table
    assert "(objective)" in out["confirm"] and "% base" in out["confirm"] and "% family" in out["confirm"]
    key, note, _fig, tasks = client.predict(f"{ids[0]}:0", api_name="/select_trial")
    sid, number = (int(x) for x in key.split(":"))
    head, rows = grid(tasks)
    t = st.trials(sid)[number]
    hand = by_hand(t.result.scores, studies[sid]["refs"])["tasks"]
    assert [r[0] for r in rows] == list(t.result.scores)
    for r in rows:
        for d in ("family", "base"):
            want = hand[d][r[0]]
            got = r[col(head, f"{d} %")]
            assert (got is None) if want is None else got == pytest.approx(100 * want, abs=0.06)


def test_search_tab_studies_show_both_definitions(app):
    client, st, ids, _, _ = app
    rows = rows_of(client.predict(api_name="/studies"))
    from ui.search_tab import STUDY_COLUMNS as head

    for s in st.studies():
        if s["id"] not in ids:  # the session's shared app: other modules add studies of their own
            continue
        r = next(r for r in rows if r[0] == s["id"])
        best = next(t for t in st.trials(s["id"]) if t.number == s["best_trial"])  # by number, not list place
        want = by_hand(best.result.scores, s["refs"])["means"]
        assert r[col(head, "best family")] == pytest.approx(100 * want["family"], abs=0.06)
        assert r[col(head, "best base")] == pytest.approx(100 * want["base"], abs=0.06)
        assert r[head.index("objective")] == s["refs"]["definition"]


def test_compare_shows_both_definitions_on_the_test_split(app):
    client, st, ids, data, test_refs = app
    table, _bars, _maps, _note = client.predict("demo", None, api_name="/compare")
    head, rows = grid(table)
    studies = {s["id"]: s for s in st.studies()}
    definition = studies[ids[0]]["refs"]["definition"]
    assert f"{definition} retention % [95%] (objective)" in head
    for r in (r for r in rows if r[0] in ids):  # the fixture's studies (other modules add their own)
        want = by_hand(studies[r[0]]["report"]["scores"], test_refs)["means"]
        assert interval_of(r[col(head, "family retention")])[0] == pytest.approx(100 * want["family"], abs=0.06)
        assert interval_of(r[col(head, "base retention")])[0] == pytest.approx(100 * want["base"], abs=0.06)
        assert r[col(head, "vs the best")] == "best" or "noise" in r[col(head, "vs the best")]


def test_evaluate_and_editor_show_both_definitions(app):
    client, st, ids, data, test_refs = app
    plan = "0:base 1:math 2:drop 3:facts 4:base 5:strings 6:drop 7:base"
    summary, table = client.predict("demo", plan, 8, api_name="/evaluate")
    head, rows = grid(table)
    refs = next(r for p in (data / "cache").glob("refs-demo-*.json")
                if (r := json.loads(p.read_text()))["split"] == "test")  # what the app stored and scored against
    assert all(refs["scores"][m] == pytest.approx(v) for m, v in test_refs["scores"].items())
    hand = by_hand({r[0]: r[head.index("score")] for r in rows}, refs)
    assert "(objective)" in " ".join(head) and "Retention" in summary and "the objective" in summary
    for r in rows:
        kind = refs["kinds"][r[0]]
        best = max(refs["scores"], key=lambda m: goodness(kind, refs["scores"][m][r[0]]))
        assert r[head.index("best member")] == best
        assert r[col(head, "family reference")] == pytest.approx(refs["scores"][best][r[0]], abs=1e-4)
        for d in ("family", "base"):  # scores are shown to 4 digits: the hand value carries that rounding
            want = hand["tasks"][d][r[0]]
            got = r[col(head, f"{d} retention")]
            assert (got is None) if want is None else got == pytest.approx(100 * want, abs=0.2)

    # the headline names its split and fidelity and carries its 95% interval: Wilson per task, by hand
    d = next(x for x in ("family", "base") if f"{x} retention % (objective)" in head)
    shown = {r[0]: r[head.index("score")] for r in rows}
    rep = {"definition": d, "task_retentions": hand["tasks"], "scores": shown, "details": {t: {"n": 8} for t in shown}}
    m, lo, hi, _se = objective_by_hand(rep, refs)
    got = re.search(r"\*\*Retention ([\d.]+)%\*\* \(95% interval ([\d.]+)-([\d.]+); test split, 8 examples per task;",
                    summary)
    assert got, summary
    assert [float(x) for x in got.groups()] == pytest.approx([100 * m, 100 * lo, 100 * hi], abs=0.15)
    assert hi - lo > 0.01  # 8 examples per task: a wide interval, not a point

    note, table = client.predict("demo", plan, 8, api_name="/evaluate_manual")
    head, rows = grid(table)
    sid = int(note.rsplit("stored as study ", 1)[1].split()[0].rstrip("·"))
    s = st.study(sid)
    t = st.trials(sid)[0]
    hand = by_hand(t.result.scores, s["refs"])
    assert f"{s['refs']['definition']} retention % (objective)" in head
    assert f"{100 * hand['means']['family']:.1f}% family" in note and f"{100 * hand['means']['base']:.1f}% base" in note
    assert "95% interval" in note and "test split, 8 examples per task" in note
    for r in rows:
        assert r[head.index("this plan")] == round(t.result.scores[r[0]], 4)
        for d in ("family", "base"):
            want = hand["tasks"][d][r[0]]
            got = r[col(head, f"{d} retention")]
            assert (got is None) if want is None else got == pytest.approx(100 * want, abs=0.06)
