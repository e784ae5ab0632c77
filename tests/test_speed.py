"""Measured prefill/decode speed: the timed loop is real greedy decoding, and it reaches every report."""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from gptailor import Evaluator, Family, Plan, load_suite
from gptailor.eval.results import EvalResult
from gptailor.export.hf import export
from gptailor.cli import main as cli_main
from gptailor.eval.speed import SpeedSettings, _prompt, _run, compare, measure
from gptailor.stitch import Stitcher


@pytest.fixture(scope="module")
def demo_family():
    return Family.from_spec("demo")


@dataclass
class Call:
    tokens: int  # input length: the prompt for a prefill, 1 for a decode step
    start: float
    end: float


class CallClock:
    """The test's own record of a model's forward calls: input length, when each began and ended (hooks
    on the model, on the same perf_counter clock). A measured time must lie between the calls' own
    durations (lower bound) and the gaps around them (upper bound), whatever the machine's load."""

    def __init__(self, model) -> None:
        self.calls: list[Call] = []
        self.handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(lambda *_: setattr(self.calls[-1], "end", time.perf_counter())),
        ]

    def _pre(self, _module, _args, kwargs) -> None:
        self.calls.append(Call(kwargs["input_ids"].shape[1], time.perf_counter(), float("nan")))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def run_bounds(calls: list[Call], before: float, after: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """(prefill, decode) time bounds of one run: its prefill call, then its decode calls; ``before`` and
    ``after`` are clock readings just before the run started and just after it ended."""
    pre, first, last = calls[0], calls[1], calls[-1]
    return (pre.end - pre.start, first.start - before), (last.end - first.start, after - pre.end)


def check_measure(speed, calls: list[Call], before: float, after: float, s: SpeedSettings) -> None:
    """``speed`` (from ``measure``) is batch * tokens / the median time of its runs, within the bounds the
    recorded calls give: a warm-up (prefill + one step), then ``repeats`` runs of prefill + new_tokens - 1."""
    run_len = s.new_tokens
    assert [c.tokens for c in calls] == [s.prompt_len, 1] + ([s.prompt_len] + [1] * (run_len - 1)) * s.repeats
    runs = [calls[2 + k * run_len: 2 + (k + 1) * run_len] for k in range(s.repeats)]
    edges = [calls[1].end] + [r[-1].end for r in runs]  # before each run: the previous call's end
    nexts = [r[0].start for r in runs[1:]] + [after]  # after each run: the next call's start
    bounds = [run_bounds(r, b, a) for r, b, a in zip(runs, edges, nexts)]
    pre_lo, pre_hi = (statistics.median(b[0][j] for b in bounds) for j in (0, 1))
    dec_lo, dec_hi = (statistics.median(b[1][j] for b in bounds) for j in (0, 1))
    eps = 1 + 1e-9
    assert s.batch * s.prompt_len / pre_hi / eps <= speed.prefill_tok_s <= s.batch * s.prompt_len / pre_lo * eps
    assert s.batch * (s.new_tokens - 1) / dec_hi / eps <= speed.decode_tok_s <= s.batch * (s.new_tokens - 1) / dec_lo * eps


def clocked_measure(model, s: SpeedSettings):
    """``measure(model, s)`` with its calls recorded, checked against them; returns the Speed."""
    clock = CallClock(model)
    try:
        before = time.perf_counter()
        speed = measure(model, s)
        after = time.perf_counter()
    finally:
        clock.close()
    check_measure(speed, clock.calls, before, after, s)
    return speed


@pytest.fixture
def run_cli(capsys):
    def run(*args: str) -> str:
        assert cli_main(list(args)) == 0
        return capsys.readouterr().out
    return run


def test_timed_decode_loop_is_greedy_generation(demo_family):
    # Independent computation: transformers' generate() with the same prompt, greedy.
    model = Stitcher(demo_family).build(Plan.from_text("0:base 1:math 2:drop 3:facts 4:base 5:strings 6:base 7:base"))
    s = SpeedSettings(prompt_len=12, new_tokens=6, batch=2)
    ids = _prompt(model, s)
    clock = CallClock(model)
    before = time.perf_counter()
    pre, dec, toks = _run(model, ids, s.new_tokens)
    after = time.perf_counter()
    clock.close()
    assert [c.tokens for c in clock.calls] == [12] + [1] * 5  # the prefill, then one step per new token
    (pre_lo, pre_hi), (dec_lo, dec_hi) = run_bounds(clock.calls, before, after)
    assert pre_lo <= pre <= pre_hi and dec_lo <= dec <= dec_hi  # the times of those calls, and only those
    seq = ids  # independent computation: greedy without a KV cache, the whole sequence re-run each step
    with torch.no_grad():
        for _ in range(6):
            nxt = model(input_ids=seq, use_cache=False).logits[:, -1:].argmax(-1)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(toks, seq[:, 12:]) and pre > 0 and dec > 0


@pytest.mark.parametrize("s", [SpeedSettings(prompt_len=16, new_tokens=4, batch=2, repeats=3),
                               SpeedSettings(prompt_len=24, new_tokens=2, batch=1, repeats=2)])
def test_tokens_per_second_are_the_tokens_over_the_median_measured_time(demo_family, s):
    base = Stitcher(demo_family).build(Plan.identity(8, family="demo"))
    speed = clocked_measure(base, s)
    assert (speed.prompt_len, speed.new_tokens, speed.batch) == (s.prompt_len, s.new_tokens, s.batch)


def test_speed_reports_tokens_per_second_against_the_base(demo_family):
    st = Stitcher(demo_family)
    base = st.build(Plan.identity(8, family="demo"))
    small = st.build(Plan.from_text("0:base 1:base 2:drop 3:drop 4:drop 5:drop 6:base 7:base"))
    s = SpeedSettings(prompt_len=16, new_tokens=4, repeats=1)
    out = compare(small, base, s)
    assert out["prefill_ratio"] == out["model"]["prefill_tok_s"] / out["base"]["prefill_tok_s"]
    assert out["decode_ratio"] == out["model"]["decode_tok_s"] / out["base"]["decode_tok_s"]
    assert out["model"]["prompt_len"] == 16 and out["model"]["dtype"] == "float32"
    assert measure(base, s).prefill_tok_s > 0
    # the base against itself: two measurements back to back (base slot first), each the tokens over its
    # own calls' time, and the ratio is theirs
    clock = CallClock(base)
    before = time.perf_counter()
    out = compare(base, base, s)
    after = time.perf_counter()
    clock.close()
    half = len(clock.calls) // 2
    mid = clock.calls[half - 1].end, clock.calls[half].start
    for key, calls, b, a in (("base", clock.calls[:half], before, mid[1]), ("model", clock.calls[half:], mid[0], after)):
        check_measure(SimpleNamespace(**out[key]), calls, b, a, s)
    assert out["prefill_ratio"] == out["model"]["prefill_tok_s"] / out["base"]["prefill_tok_s"]


def test_cli_eval_reports_speed_and_no_speed_skips_it(run_cli):
    plan = "0:base 1:math 2:drop 3:facts 4:base 5:strings 6:base 7:base"
    res = json.loads(run_cli("eval", "--family", "demo", "-p", plan, "--fidelity", "2", "--json"))
    speed = res["speed"]
    assert speed["model"]["prefill_tok_s"] > 0 and speed["base"]["decode_tok_s"] > 0
    for kind in ("prefill", "decode"):  # the reported ratios are those of the reported speeds
        assert speed[f"{kind}_ratio"] == speed["model"][f"{kind}_tok_s"] / speed["base"][f"{kind}_tok_s"]
    assert speed["model"]["prompt_len"] == 128 and speed["model"]["new_tokens"] == 32  # the documented defaults
    last = EvalResult.from_dict(res).table().splitlines()[-1]
    assert last.startswith("speed (cpu, float32") and "prefill" in last and "decode" in last
    assert "speed" not in run_cli("eval", "--family", "demo", "-p", plan, "--fidelity", "2", "--no-speed")


def test_model_card_carries_the_speed_table(demo_family, tmp_path):
    plan = Plan.from_text("0:base 1:math 2:drop 3:facts 4:base 5:strings 6:base 7:base")
    res = Evaluator(demo_family, load_suite(demo_family.spec.suite_path())).evaluate(
        plan, 2, speed=SpeedSettings(prompt_len=8, new_tokens=3, repeats=1))
    export(demo_family, plan, tmp_path / "m", result=res)
    card = (tmp_path / "m" / "README.md").read_text()
    m = res.speed["model"]
    assert f"| this model | {m['prefill_tok_s']:,.0f} | {m['decode_tok_s']:,.1f} |" in card
    assert f"| ratio | {res.speed['prefill_ratio']:.2f}x |" in card
