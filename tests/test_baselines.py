"""The heuristics' cost is bounded: one base forward shared by ShortGPT, angular and LaCo's ranking, and
at most ``limit`` collapsed LaCo models run (a 30-layer model no longer costs 27 stitched forwards)."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_family
from gptailor.search.baselines import base_states, calibration_ids, laco_candidates, laco_plan, laco_plan_at
from gptailor.family.family import Family
from gptailor.plan import Plan
from gptailor.search.precompute import Precompute
from gptailor.stitch import Stitcher
from gptailor.eval.suite import Suite
from gptailor.eval.tasks import Task

L = 10


class CountingStitcher(Stitcher):
    """A real Stitcher that remembers which plans it built (to count forwards, not to fake them)."""

    def __init__(self, family: Family) -> None:
        super().__init__(family)
        self.built: list[str] = []

    def build(self, plan, *a, **kw):
        self.built.append(plan.key())
        return super().build(plan, *a, **kw)


@pytest.fixture(scope="module")
def deep_family(tmp_path_factory) -> Family:
    return Family.from_spec(make_tiny_family(tmp_path_factory.mktemp("deep"), n_layers=L))


TEXTS = ["the cat sat on the mat", "12 + 30 = 42", "paris is the capital of france", "reverse: a b c",
         "hello world, how are you", "one two three four five"]


def independent_angular(family: Family, n: int) -> list[float]:
    """d(l, l+n) from transformers' own ``output_hidden_states``, text by text (no padding, no hooks)."""
    model = Stitcher(family).build(Plan.identity(L, "base", family.name))
    tok = family.tokenizer
    per_text = []
    with torch.no_grad():
        for t in TEXTS:
            ids = tok(t, return_tensors="pt")
            hs = model(**ids, output_hidden_states=True).hidden_states  # hs[l] = input of layer l (l < L)
            per_text.append([h[0, -1].float() for h in hs[:L]])
    out = []
    for l in range(L - n):
        if l + n >= L:  # hs[L] is after the final norm: not a layer input
            break
        vals = [math.acos(max(-1.0, min(1.0, float(torch.nn.functional.cosine_similarity(
            h[l], h[l + n], dim=0))))) / math.pi for h in per_text]
        out.append(sum(vals) / len(vals))
    return out


def test_laco_candidates_are_the_most_similar_blocks(deep_family):
    n = 2
    states = base_states(deep_family, TEXTS)
    assert laco_candidates(states, n, limit=100) == list(range(0, L - n - 1))  # few enough: every block
    d = independent_angular(deep_family, n)
    got = laco_candidates(states, n, limit=3)
    starts = range(0, L - n - 1)
    expect = sorted(sorted(starts, key=lambda s: (round(d[s + 1], 4), -s))[:3])
    assert got == expect


def test_laco_runs_at_most_limit_collapsed_models_and_keeps_the_closest(deep_family):
    n, limit = 2, 3
    st = CountingStitcher(deep_family)
    plan = laco_plan(deep_family, n, TEXTS, st, limit=limit)
    identity = Plan.identity(L, "base", deep_family.name).key()
    collapsed = [k for k in st.built if k != identity]
    assert st.built.count(identity) == 1 and len(collapsed) == limit
    # the winner is the tried block whose collapsed model's last state is closest to the full model's
    model = Stitcher(deep_family).build(Plan.identity(L, "base", deep_family.name))
    tok = deep_family.tokenizer

    def last_state(m) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([m(**tok(t, return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0, -1]
                                for t in TEXTS])
    full = last_state(model)
    sims = {}
    for start in range(0, L - n - 1):
        p = laco_plan_at(deep_family, n, start)
        if p.key() in collapsed:
            out = last_state(Stitcher(deep_family).build(p))
            sims[p.key()] = float(torch.nn.functional.cosine_similarity(out, full, dim=-1).mean())
    assert plan.key() == max(sims, key=sims.get)


def test_seed_heuristics_share_one_base_forward(deep_family, tmp_path):
    suite = Suite("s", [Task("t", "perplexity", [{"text": t} for t in TEXTS * 4])])
    st = CountingStitcher(deep_family)
    removals = Precompute(tmp_path / "cache").heuristic_removals(deep_family, 2, suite, st)
    identity = Plan.identity(L, "base", deep_family.name).key()
    assert st.built.count(identity) == 1  # ShortGPT, angular and LaCo's ranking read one forward
    assert set(removals) == {"last_n", "shortgpt", "angular", "laco"} and all(len(v) == 2 for v in removals.values())
    texts = calibration_ids(suite, deep_family.tokenizer)
    assert removals["laco"] == [i for i, op in enumerate(laco_plan(deep_family, 2, texts).ops) if op.kind == "drop"]
    st2 = CountingStitcher(deep_family)  # a second study: everything from the cache, no forward at all
    assert Precompute(tmp_path / "cache").heuristic_removals(deep_family, 2, suite, st2) == removals
    assert st2.built == []


class SeeingStitcher(Stitcher):
    """A real Stitcher whose models record the token ids they are run on (padding removed)."""

    def __init__(self, family: Family) -> None:
        super().__init__(family)
        self.seen: dict[str, list[list[int]]] = {}

    def build(self, plan, *a, **kw):
        model = super().build(plan, *a, **kw)
        rows = self.seen.setdefault(plan.key(), [])

        def record(_module, args, kwargs):
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"].bool()
            rows.extend(r[m].tolist() for r, m in zip(ids, mask))
        model.register_forward_pre_hook(record, with_kwargs=True)
        return model


CHAT_QA = [{"prompt": f"what is {a} + {b}?", "target": str(a + b)} for a, b in ((2, 3), (10, 7), (4, 4), (9, 1))]
CHAT_MC = [{"context": f"is {w} a colour?", "choices": [" yes", " no"], "answer": int(w == "cat")}
           for w in ("red", "cat", "blue", "green")]


def test_calibration_goes_through_the_chat_template_as_scoring_does(deep_family, tmp_path):
    """With ``chat_template: true`` the heuristics run on the template's text (one user turn, the generation
    prompt, then the target), token for token what scoring feeds; plain tasks stay plain text."""
    tok = deep_family.tokenizer
    suite = Suite("s", [Task("qa", "exact_match", CHAT_QA, chat_template=True),
                        Task("mc", "multiple_choice", CHAT_MC, chat_template=True),
                        Task("plain", "exact_match", CHAT_QA)])
    ids = calibration_ids(suite, tok, n=3 * len(CHAT_QA))

    def chat(prompt: str) -> str:
        return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)

    want = {}
    for task in suite:
        for ex in task.subset(len(CHAT_QA), "search"):
            if task.name == "qa":
                text, special = chat(ex["prompt"]) + ex["target"], False
            elif task.name == "mc":
                text, special = chat(ex["context"]) + ex["choices"][ex["answer"]], False
            else:
                text, special = ex["prompt"] + ex["target"], True
            want.setdefault(task.name, []).append(tok(text, add_special_tokens=special)["input_ids"])
    expected = want["qa"] + want["mc"] + want["plain"]
    assert ids == expected
    assert tok.decode(ids[0]).startswith("<|user|>what is") and "<|assistant|>" in tok.decode(ids[0])
    assert tok.decode(ids[-1]).startswith("what is")  # a plain task's text is not templated

    from gptailor.eval.evaluator import Evaluator  # scoring's rows: the same ids, context then target

    ev = Evaluator(deep_family, suite)
    scored = []
    for task in suite:
        rows, meta = ev._rows(task, task.subset(len(CHAT_QA), "search"))
        if task.kind == "multiple_choice":
            rows = [rows[start + answer] for start, _, answer in meta]
        scored += [c + t for c, t in rows]
    assert scored == expected

    st = SeeingStitcher(deep_family)  # what the heuristics' models are really run on, through the cache path
    Precompute(tmp_path / "cache").heuristic_removals(deep_family, 2, suite, st)
    assert st.seen[Plan.identity(L, "base", deep_family.name).key()] == expected
