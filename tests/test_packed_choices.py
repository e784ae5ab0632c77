"""Multiple choice with the shared context scored once: a doc's choices packed after its context in one
sequence (4D attention mask, position ids restarting per choice) must give every choice the very
log-likelihood it gets alone, on Llama and Qwen2, sdpa and eager, stitched plans, ragged batches."""
from __future__ import annotations

import pytest
import torch

from gptailor import Evaluator, Family, Plan
from gptailor.eval.batching import packed_mask
from gptailor.stitch import Stitcher
from gptailor.eval.suite import Suite
from gptailor.eval.tasks import load_task
from conftest import loglik_of_ids, make_tiny_family
from test_evaluate import write_jsonl

CONTEXTS = ["the sky is ", "2+2=", "red green b", "a", "color of dazon", "jump over the lazy ", "k", "mnop qrs"]
CHOICES = ["blue", "4", "lue", "zzzzzzz", "q", "dog", "x y", "purple!"]


def docs() -> list[dict]:
    """Ragged docs: 2 to 8 choices of 1 to 7 characters; every third doc has one context per choice
    (lm-eval's partial evaluation, which must stay one row per choice); one doc repeats a context twice."""
    out = []
    for i, ctx in enumerate(CONTEXTS * 2):
        k = 2 + (i * 3) % 7
        choices = [CHOICES[(i + j) % len(CHOICES)][: 1 + (i + 2 * j) % 7] for j in range(k)]
        if i % 3 == 2:
            context = [ctx + c[:1] for c in choices]
            context[1] = context[0]  # two choices share a context inside a partial-evaluation doc
        else:
            context = ctx
        out.append({"context": context, "choices": choices, "answer": i % k})
    return out


def naive_ll(model, tok, ctx: str, cont: str) -> float:
    """The continuation as lm-eval tokenises it: the tail of the whole text's tokens where the context's are
    its head, else on its own (``conftest.loglik_of_ids`` on those ids)."""
    c = tok(ctx)["input_ids"]
    whole = tok(ctx + cont)["input_ids"]
    t = whole[len(c):] if whole[: len(c)] == c else tok(cont, add_special_tokens=False)["input_ids"]
    return loglik_of_ids(model, c, t)[0]


@pytest.fixture(scope="module")
def mc_task(tmp_path_factory):
    return load_task(write_jsonl(tmp_path_factory.mktemp("mc") / "mc.jsonl", docs()), "multiple_choice")


@pytest.fixture(scope="module")
def qwen_family(tmp_path_factory):
    return Family.from_spec(make_tiny_family(tmp_path_factory.mktemp("qwen"), model_type="qwen2"))


@pytest.fixture(scope="module")
def demo():
    return Family.from_spec("demo")


def compare(fam: Family, model, task, batch_size: int = 3, max_length: int | None = None) -> list[dict]:
    """Packed vs per-row vs one-by-one: equal log-likelihoods, identical acc and acc_norm."""
    packed = Evaluator(fam, Suite("p", [task]), batch_size=batch_size, split="all", max_length=max_length)
    rows = Evaluator(fam, Suite("r", [task]), batch_size=batch_size, split="all", max_length=max_length,
                     pack_choices=False)
    got, ref = packed.example_scores(model, task), rows.example_scores(model, task)
    examples = task.subset(None, "all")  # example_scores' order
    assert len(got) == len(ref) == len(examples) == len(task.examples)
    for g, r in zip(got, ref):
        assert g["lls"] == pytest.approx(r["lls"], abs=1e-4)
        assert (g["acc"], g["acc_norm"]) == (r["acc"], r["acc_norm"])
    pm, rm = packed.task_metrics(model, task), rows.task_metrics(model, task)
    assert pm.keys() == rm.keys()
    for k in ("acc", "acc_norm", "n", "stderr"):  # accuracy: identical; continuous scores: to float precision
        assert pm[k] == rm[k], k
    assert pm == pytest.approx(rm, rel=1e-5)
    if max_length is None:
        tok = fam.tokenizer
        for g, ex in zip(got, examples):
            ctxs = ex["context"] if isinstance(ex["context"], list) else [ex["context"]] * len(ex["choices"])
            assert g["lls"] == pytest.approx([naive_ll(model, tok, c, ch) for c, ch in zip(ctxs, ex["choices"])],
                                             abs=1e-4)
    return got


def forward_rows(ev: Evaluator, task, packed: bool) -> int:
    return sum(b.input_ids.shape[0] for b in ev._prepare(task, None, "all", packed)[0])


def test_packed_mask_sees_context_and_own_choice_only():
    seg = torch.tensor([[0, 0, 1, 1, 2, 2, 2, -1]])
    seen = packed_mask(seg, torch.float32)[0, 0] == 0
    expected = torch.zeros(8, 8, dtype=torch.bool)
    for q, sq in enumerate(seg[0].tolist()):
        for k, sk in enumerate(seg[0].tolist()):
            expected[q, k] = (k <= q and sq >= 0 and sk >= 0 and sk in (0, sq)) or k == q
    assert torch.equal(seen, expected)
    assert packed_mask(seg, torch.float16).dtype == torch.float16


@pytest.mark.parametrize("plan", ["identity", "0:facts 1:math 2:drop 3:merge(math=.5,strings=.5) 4:drop "
                                              "5:strings 6:facts 7:base"])
def test_demo_packed_equals_rows(demo, mc_task, plan):
    p = Plan.identity(demo.n_layers, family="demo") if plan == "identity" else Plan.from_text(plan, "demo")
    model = Stitcher(demo).build(p)
    got = compare(demo, model, mc_task)
    assert 0 < sum(g["acc"] for g in got) < len(got)  # the scores say something
    ev = Evaluator(demo, Suite("p", [mc_task]), batch_size=3, split="all")
    shared = sum(1 for e in mc_task.examples if isinstance(e["context"], str))
    own = sum(len(set(e["context"])) for e in mc_task.examples if isinstance(e["context"], list))
    assert forward_rows(ev, mc_task, True) == shared + own  # one forward row per doc (and per own context)
    assert forward_rows(ev, mc_task, False) == sum(len(e["choices"]) for e in mc_task.examples)


def test_demo_eager_attention_and_split_packs(demo, mc_task):
    model = Stitcher(demo).build(Plan.from_text("0:math 1:math 2:math 3:math 4:drop 5:math 6:math 7:math", "demo"))
    model.set_attn_implementation("eager")
    compare(demo, model, mc_task, batch_size=4)
    model.set_attn_implementation("sdpa")
    # A max length below a doc's packed length: its choices go in several packs; a row too long even alone
    # is cut from the left exactly as the per-row path cuts it.
    ev = Evaluator(demo, Suite("p", [mc_task]), batch_size=4, split="all", max_length=24)
    assert forward_rows(ev, mc_task, True) > len(mc_task.examples)
    assert max(b.input_ids.shape[1] for b in ev._prepare(mc_task, None, "all", True)[0]) <= 24
    compare(demo, model, mc_task, batch_size=4, max_length=24)


@pytest.mark.parametrize("plan", ["0:base 1:math 2:code 3:base", "0:math 1:drop 2:merge(math=.5,code=.5) 3:code"])
def test_qwen2_packed_equals_rows(qwen_family, mc_task, plan):
    model = Stitcher(qwen_family).build(Plan.from_text(plan, qwen_family.name))
    compare(qwen_family, model, mc_task, batch_size=5)
