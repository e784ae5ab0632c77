"""The prefix-state cache must not change a single score: every forward that starts from a cached prefix
state must give the hidden states (and so the logits) of transformers' own forward from the embeddings,
on tiny Llama and Qwen2 (with sliding and full layers mixed) models, for picks, every merge method, drops
at and after the cache point, packed multiple choice, perplexity, a hit after eviction, and a changed
example set (which must miss)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gptailor import Evaluator, Family, Plan
from gptailor.builtin import demo
from gptailor.eval.prefix import PrefixCache, forward_hidden, pass_stride, prefix_keys, store_points
from gptailor.eval.suite import load_suite
from gptailor.merge import METHODS
from conftest import make_tiny_family

MB = 2 ** 20


def family_and_suite(root, model_type: str):
    """6 layers; ``math`` leaves layers 0-2 bit-identical to the base (a pick there is the base's layer)."""
    extra = {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 3} if model_type == "qwen2" else {}
    spec = make_tiny_family(root, n_layers=6, model_type=model_type, base_layers={"math": [0, 1, 2]}, **extra)
    demo.write_tasks(root, n_test=12)
    for name in ("facts", "chat_ppl"):  # the demo writes 200 and 120 of these: 16 keep the test quick
        path = root / "tasks" / f"{name}.jsonl"
        path.write_text("\n".join(path.read_text().splitlines()[:16]) + "\n")
    return Family.from_spec(spec), load_suite(root / "tasks" / "suite.yaml")


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def fam_suite(request, tmp_path_factory):
    return family_and_suite(tmp_path_factory.mktemp(request.param), request.param)


def merge_plans() -> list[str]:
    plans = []
    for name, m in METHODS.items():
        args = "math=.5,code=.5" if m.max_members is None or m.max_members >= 2 else "code=1"
        plans.append(f"0:base 1:base 2:base 3:merge[{name}]({args}) 4:code 5:base")
    return plans


PLANS = [
    "0:base 1:base 2:base 3:base 4:base 5:base",
    "0:base 1:base 2:base 3:math 4:code 5:base",  # shares kept layers 1-3 with the base
    "0:math 1:math 2:math 3:math 4:code 5:code",  # math's 0-2 are the base's: hits the previous plan at 4
    "0:base 1:base 2:base 3:drop 4:code 5:base",  # a drop right at the cache point
    "0:base 1:base 2:base 3:math 4:drop 5:drop",  # drops after it: the whole model is cached
    "0:drop 1:base 2:base 3:base 4:base 5:base",  # a drop first: nothing shared (layer 1 on the embeddings)
    *merge_plans(),
    "0:base 1:base 2:base 3:math 4:code 5:base",  # again: every state is cached
]


def scratch_hidden(model, inputs):
    with torch.inference_mode():
        return model.model(**inputs, use_cache=False).last_hidden_state


def test_every_plan_scores_exactly_as_from_scratch(fam_suite):
    fam, suite = fam_suite
    off = Evaluator(fam, suite, prefix_cache=False, batch_size=8)
    cache = PrefixCache(64 * MB)
    on = Evaluator(fam, suite, prefix_cache=cache, batch_size=8)
    assert any(b.segments is not None for b in on._prepare(suite.tasks[2], None)[0]), "multiple choice is packed"
    depths = []
    for text in PLANS:
        plan = Plan.from_text(text, fam.name)
        model = on.stitcher.build(plan)
        before = cache.snapshot()
        got = on.model_details(model, plan=plan)
        want = off.model_details(off.stitcher.build(plan))
        assert got == want, text  # every metric of every task, to the bit
        depths.append(cache.snapshot().minus(before))
        run = on.prefix_run(model, plan)
        for task in suite:  # and the hidden states themselves, batch by batch, from the cached prefixes
            for b in on._prepare(task, None)[0]:
                inputs = b.model_inputs(model.dtype)
                with torch.inference_mode():
                    cached = run.hidden(model, inputs, b.key)
                torch.testing.assert_close(cached, scratch_hidden(model, inputs), rtol=0, atol=1e-6)
    skipped = [d.layers_skipped // max(d.lookups, 1) for d in depths]
    assert skipped[0] == 0  # a cold cache runs everything
    assert skipped[1] == 3  # the base's first three kept layers
    assert skipped[2] == 5  # 0-2 picked from math are the base's; 3:math 4:code as in plan 1
    assert skipped[3] == 3 and skipped[4] == 4  # drops: the kept prefix before them (plan 4: all 4 kept)
    assert skipped[5] == 0
    assert all(s == 3 for s in skipped[6:-1]), skipped  # every merge at 3 reuses the base's 0-2
    assert skipped[-1] == 6  # nothing left to run but the head


def test_a_changed_example_set_misses(fam_suite, tmp_path):
    fam, suite = fam_suite
    cache = PrefixCache(64 * MB)
    plan = Plan.identity(fam.n_layers, family=fam.name)
    first = Evaluator(fam, suite, prefix_cache=cache, batch_size=64)
    first.model_details(first.stitcher.build(plan), plan=plan)
    # another fidelity: other batches, all miss
    before = cache.snapshot()
    first.model_details(first.stitcher.build(plan), fidelity=3, plan=plan)
    assert cache.snapshot().minus(before).hits == 0
    # one example of one task changed: that task's batch misses, the other tasks' hit
    folder = tmp_path / "tasks"
    shutil.copytree(Path(suite.path).parent, folder)
    rows = [json.loads(x) for x in (folder / "math.jsonl").read_text().splitlines()]
    i = suite.tasks[0].split_indices("test")[0]  # an example the test split scores
    rows[i]["prompt"] = "1" + rows[i]["prompt"]
    (folder / "math.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    other = Evaluator(fam, load_suite(folder / "suite.yaml"), prefix_cache=cache, batch_size=64)
    model = other.stitcher.build(plan)
    before = cache.snapshot()
    got = other.model_details(model, plan=plan)
    d = cache.snapshot().minus(before)
    math_batches = len(other._prepare(other.suite.tasks[0], None)[0])
    assert d.lookups - d.hits == math_batches == 1  # math's one batch missed, every other task's hit
    assert got == Evaluator(fam, other.suite, prefix_cache=False, batch_size=64).model_details(model)


def test_a_hit_after_eviction(fam_suite):
    fam, suite = fam_suite
    off = Evaluator(fam, suite, prefix_cache=False, batch_size=64)
    probe = PrefixCache(1024 * MB)
    ev = Evaluator(fam, suite, prefix_cache=probe, batch_size=64)
    base = Plan.identity(fam.n_layers, family=fam.name)
    ev.model_details(ev.stitcher.build(base), plan=base)
    # one layer's states over every batch of the suite: the pass kept layers 1-5 (the last layer's output
    # is read by the head, whose few bytes of scores are kept instead)
    layer_bytes = probe.store.nbytes // (fam.n_layers - 1)
    # room for about two passes' deepest states (stride: one state per pass): the next plans evict the base's
    cache = PrefixCache(int(layer_bytes * 2.5))
    ev = Evaluator(fam, suite, prefix_cache=cache, batch_size=64)
    plans = [Plan.from_text(t, fam.name) for t in (
        "0:base 1:base 2:base 3:base 4:base 5:base", "0:code 1:code 2:code 3:code 4:code 5:code",
        "0:base 1:code 2:code 3:code 4:code 5:code", "0:base 1:base 2:base 3:base 4:base 5:base",
        "0:base 1:base 2:base 3:base 4:base 5:base")]
    stats = []
    for p in plans:
        model = ev.stitcher.build(p)
        before = cache.snapshot()
        assert ev.model_details(model, plan=p) == off.model_details(model), p.to_text()
        stats.append(cache.snapshot().minus(before))
        assert cache.store.nbytes <= cache.max_bytes
    assert stats[3].hits == 0  # the base's states and scores were evicted by the code plans ...
    assert stats[4].hits == stats[4].lookups and stats[4].layers_run == 0  # ... kept again, and hit


def test_store_points_and_stride():
    assert store_points(0, 6, 1) == [1, 2, 3, 4, 5, 6]
    assert store_points(2, 6, 2) == [4, 6]
    assert store_points(0, 7, 3) == [3, 6, 7]  # the last is always kept
    assert store_points(6, 6, 1) == [] and store_points(0, 6, 0) == []
    assert store_points(0, 6, 1, last=False) == [1, 2, 3, 4, 5]  # the head's reads are kept instead
    assert store_points(0, 7, 3, last=False) == [3, 6] and store_points(0, 6, 6, last=False) == []
    assert pass_stride(30, 10, 0) == 0  # cache off
    assert pass_stride(30, 1, 4000) == 1  # room for every layer within a quarter of the budget
    assert pass_stride(30, 100, 4000) == 3  # a quarter holds 10 states: every third of 30
    assert pass_stride(30, 2000, 4000) == 30  # not even one: the last only


def test_keys_canonical(fam_suite):
    fam, _ = fam_suite
    dev, dt = torch.device("cpu"), torch.float32
    k = lambda t, shared="base": prefix_keys(fam, Plan.from_text(t, fam.name), shared, dev, dt).keys  # noqa: E731
    base = k("0:base 1:base 2:base 3:base 4:base 5:base")
    assert k("0:math 1:math 2:math 3:base 4:base 5:base") == base  # math's 0-2 are the base's layers
    assert k("0:code 1:base 2:base 3:base 4:base 5:base")[0] != base[0]
    assert k("0:base 1:drop 2:base 3:base 4:base 5:base")[:1] == base[:1]
    assert k("0:base 1:drop 2:base 3:base 4:base 5:base")[1] != base[1]  # layer 2 after 0 is not layer 1 after 0
    assert k("0:base 1:base 2:base 3:base 4:base 5:base", "code") != base  # code's own embeddings
    # a merge whose sources are the base's layers is keyed as such, whatever the members are called
    assert (k("0:merge(math=.5,base=.5) 1:base 2:base 3:base 4:base 5:base")[0]
            == k("0:merge(base=.5,base=.5) 1:base 2:base 3:base 4:base 5:base")[0])


def test_forward_from_a_state_equals_the_whole_forward(fam_suite):
    fam, suite = fam_suite
    ev = Evaluator(fam, suite, prefix_cache=False, batch_size=64)
    plan = Plan.from_text("0:base 1:code 2:drop 3:math 4:base 5:code", fam.name)
    model = ev.stitcher.build(plan)
    for task in suite:
        for b in ev._prepare(task, None)[0]:
            inputs = b.model_inputs(model.dtype)
            with torch.inference_mode():
                whole, kept = forward_hidden(model, inputs, keep=[1, 2, 3, 4, 5])
                for j in (1, 3, 5):
                    tail, _ = forward_hidden(model, inputs, start=j, state=kept[j])
                    torch.testing.assert_close(tail, whole, rtol=0, atol=1e-6)
            assert len(model.model.layers) == 5  # the tails were views only


def test_batches_cut_at_the_rungs_carry_states_from_rung_to_rung(fam_suite):
    """With a search's rungs as edges, fidelity 3's batches are fidelity 9's first batches: the same plan at
    9 re-runs no layer on those examples (the head's reads are kept), and every score is the cache-off one."""
    fam, suite = fam_suite
    cache = PrefixCache(64 * MB)
    on = Evaluator(fam, suite, prefix_cache=cache, batch_size=64)
    off = Evaluator(fam, suite, prefix_cache=False, batch_size=64)
    plain = Evaluator(fam, suite, prefix_cache=False, batch_size=64)
    for ev in (on, off):
        ev.align_batches([9, 3])
    scored = [t for t in suite if not (t.kind == "exact_match" and t.filter)]
    for t in scored:
        low, high = on._prepare(t, 3)[0], on._prepare(t, 9)[0]
        assert len(high) == len(low) + 1 and [b.key for b in low] == [b.key for b in high[:len(low)]], t.name
        assert high[-1].n_rows == high[0].n_rows > low[0].n_rows  # flat rows count the whole fidelity
    plan = Plan.from_text("0:base 1:base 2:base 3:math 4:code 5:base", fam.name)
    model = on.stitcher.build(plan)
    assert on.model_details(model, fidelity=3, plan=plan) == off.model_details(model, fidelity=3)
    before = cache.snapshot()
    got = on.model_details(model, fidelity=9, plan=plan)
    d = cache.snapshot().minus(before)
    assert d.lookups == 2 * len(scored) and d.hits == len(scored)  # each task: its rung-3 block hit, the rest ran
    assert d.layers_skipped == d.layers_run == 6 * len(scored)
    assert got == off.model_details(model, fidelity=9)  # to the bit, with the same batches
    # against unaligned batches: the same examples' scores; a log-likelihood may differ in its last bits
    want = plain.model_details(model, fidelity=9)
    for task, metrics in want.items():
        for name, value in metrics.items():
            assert got[task][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, name)


def test_a_search_cuts_batches_at_its_rungs(fam_suite):
    from gptailor.search.fidelity import rungs
    from gptailor.search.optimizer import Search
    from gptailor.search.settings import SearchSettings
    from gptailor.search.space import Budget

    fam, suite = fam_suite
    ev = Evaluator(fam, suite, batch_size=64)
    search = Search(ev, Budget(remove_layers=1), SearchSettings(method="smac", min_fidelity=2, max_fidelity=18, eta=3, n_trials=1))
    assert search.max_fidelity == suite.split_fidelity("search") == 8  # the tiny suite's search split
    assert ev.batcher.edges == (3, 8) == tuple(rungs(search.min_fidelity, search.max_fidelity, 3))
    # a Dask worker rebuilds the evaluator from the objective's recipe: batched the same way
    import pickle

    from gptailor.search.optimizer import Objective
    worker = pickle.loads(pickle.dumps(Objective(ev, search.space, search.max_fidelity, "repair")))
    assert worker.evaluator is not ev and worker.evaluator.batcher.edges == (3, 8)
    flat = Evaluator(fam, suite, batch_size=64)
    Search(flat, Budget(remove_layers=1), SearchSettings(method="smac", facade="hpo", n_trials=1))
    assert flat.batcher.edges == ()  # one fidelity: nothing to carry


def test_cached_states_are_copies_in_their_own_memory():
    """A cached state lives outside malloc's heap (``off_heap``): the same values, its own storage, any dtype."""
    from gptailor.eval.prefix import off_heap

    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 7).to(dtype)
        y = off_heap(x)
        assert y.dtype == dtype and y.shape == x.shape and torch.equal(y, x)
        assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        x.zero_()  # the copy does not follow the original
        assert not torch.equal(y, x)
    t = torch.randn(4, 6)[:, ::2]  # a strided view is copied by value
    assert torch.equal(off_heap(t), t)


def test_trim_heap_hands_back_the_pages_long_lived_entries_pin(tmp_path):
    """Freed blocks below a live one stay resident until ``trim_heap`` (glibc's malloc_trim) hands them
    back: the situation of activations freed around cache entries. Run in a child process, whose malloc
    settings the test may change (4 MB blocks from the heap, as a large activation is once glibc's
    threshold has grown)."""
    import subprocess
    import sys

    script = tmp_path / "pin.py"
    script.write_text(
        "import ctypes\n"
        "from gptailor.eval.prefix import trim_heap\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "assert libc.mallopt(-3, 16 << 20)  # M_MMAP_THRESHOLD: 4 MB blocks come from the heap\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20\n"
        "blocks, pins = [], []\n"
        "for _ in range(100):  # a freed activation, then a long-lived entry above it (too big for old holes)\n"
        "    p = libc.malloc(4 << 20); ctypes.memset(p, 1, 4 << 20); blocks.append(p)\n"
        "    pins.append(libc.malloc(256 << 10))\n"
        "a = rss()\n"
        "for p in blocks: libc.free(p)\n"
        "b = rss(); trim_heap(); c = rss()\n"
        "print(a, b, c)\n")
    import os

    root = str(Path(__file__).parent.parent)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": root})
    full, freed, trimmed = map(int, out.stdout.split())
    assert freed > full - 100, (full, freed, trimmed)  # free() alone gave back next to nothing: pinned
    assert trimmed < freed - 300, (full, freed, trimmed)  # trim_heap handed the ~400 MB back


def test_ceiling_counts_the_prefixes_earlier_trials_ran_on_each_block():
    """bench.prefix_cache's bound, on three trials counted by hand: rungs 2 and 6 cut the examples into
    blocks 0-1 and 2-5; a trial skips, on each block it scores, the deepest prefix an earlier trial ran there."""
    from bench.prefix_cache import skippable

    fam = Family.from_spec("demo")
    a = "0:base 1:base 2:base 3:base 4:base 5:base 6:drop 7:drop"
    b = "0:base 1:base 2:math 3:base 4:base 5:base 6:drop 7:drop"
    trials = [{"plan": a, "fidelity": 2},   # block 0-1: nothing before it (0 of 6 kept layers)
              {"plan": b, "fidelity": 6},   # 0-1: shares a's first 2; 2-5: nothing ran there yet
              {"plan": a, "fidelity": 6}]   # 0-1: a whole repeat (6); 2-5: shares b's first 2
    r = skippable(fam, trials)
    assert r["rungs"] == [2, 6]
    assert r["by_block"] == pytest.approx((0 + 2 + 0 + 6 + 2) / 30)
    # weighted by each block's examples (2 and 4): skipped 2*2 + 6*2 + 2*4 of 6*(2 + 2 + 4 + 2 + 4)
    assert r["by_examples"] == pytest.approx(24 / 84)
    assert r["bound"] == pytest.approx(84 / 60)
    assert r["whole_repeats"] == 1
