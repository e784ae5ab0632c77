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
from gptailor.eval.speed import (INTERACTIVE, SpeedSettings, _prompt, _run, compare, measure, ratio_range,
                                 ratio_text, short, verdict)
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


def runs_of(calls: list[Call], warmups: int, run_len: int, n_runs: int, after: float):
    """The calls of each timed run after ``warmups`` warm-ups (a prefill and one step each), with the clock
    readings around each run: the previous call's end and the next call's start (``after`` for the last)."""
    assert len(calls) == 2 * warmups + run_len * n_runs
    runs = [calls[2 * warmups + k * run_len: 2 * warmups + (k + 1) * run_len] for k in range(n_runs)]
    edges = [calls[2 * warmups - 1].end] + [r[-1].end for r in runs[:-1]]
    nexts = [r[0].start for r in runs[1:]] + [after]
    return [run_bounds(r, b, a) for r, b, a in zip(runs, edges, nexts)]


def check_speed(speed, bounds, s: SpeedSettings) -> None:
    """``speed`` is batch * tokens / the median time of its runs, within the bounds the recorded calls give,
    and each run's tokens/s within that run's bounds."""
    pre_lo, pre_hi = (statistics.median(b[0][j] for b in bounds) for j in (0, 1))
    dec_lo, dec_hi = (statistics.median(b[1][j] for b in bounds) for j in (0, 1))
    eps = 1 + 1e-9
    n_pre, n_dec = s.batch * s.prompt_len, s.batch * (s.new_tokens - 1)
    assert n_pre / pre_hi / eps <= speed.prefill_tok_s <= n_pre / pre_lo * eps
    assert n_dec / dec_hi / eps <= speed.decode_tok_s <= n_dec / dec_lo * eps
    assert len(speed.prefill_runs) == len(speed.decode_runs) == len(bounds)
    for (pb, db), pr, dr in zip(bounds, speed.prefill_runs, speed.decode_runs):
        assert n_pre / pb[1] / eps <= pr <= n_pre / pb[0] * eps and n_dec / db[1] / eps <= dr <= n_dec / db[0] * eps


def check_measure(speed, calls: list[Call], before: float, after: float, s: SpeedSettings) -> None:
    """``speed`` (from ``measure``) within the bounds of its recorded calls: a warm-up (prefill + one step),
    then ``repeats`` runs of prefill + new_tokens - 1."""
    assert [c.tokens for c in calls] == [s.prompt_len, 1] + ([s.prompt_len] + [1] * (s.new_tokens - 1)) * s.repeats
    check_speed(speed, runs_of(calls, 1, s.new_tokens, s.repeats, after), s)


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
    # the base against itself: a warm-up each, then runs in turns (base, model, model, base, ...), each
    # model's speed the tokens over its own runs' time, and the ratio is theirs
    s = SpeedSettings(prompt_len=16, new_tokens=4, repeats=4)
    clock = CallClock(base)
    out = compare(base, base, s)
    after = time.perf_counter()
    clock.close()
    assert [c.tokens for c in clock.calls] == [16, 1] * 2 + [16, 1, 1, 1] * 8
    bounds = runs_of(clock.calls, 2, s.new_tokens, 8, after)
    order = ["base", "model", "model", "base"] * 2
    for key in ("base", "model"):
        check_speed(SimpleNamespace(**out[key]), [b for b, k in zip(bounds, order) if k == key], s)
    assert out["prefill_ratio"] == out["model"]["prefill_tok_s"] / out["base"]["prefill_tok_s"]
    for kind in ("prefill", "decode"):  # the range: every ratio of a model run to a base run, and no more
        every = [m / b for m in out["model"][f"{kind}_runs"] for b in out["base"][f"{kind}_runs"]]
        assert out[f"{kind}_range"] == pytest.approx([min(every), max(every)], rel=1e-12)


def test_the_base_against_itself_reads_the_same_within_noise(demo_family):
    # the app's own settings on the real demo model: two equal models must never read as a speed-up
    st = Stitcher(demo_family)
    base, again = (st.build(Plan.identity(8, family="demo")) for _ in range(2))
    out = compare(again, base, INTERACTIVE)
    for kind in ("prefill", "decode"):
        lo, hi = out[f"{kind}_range"]
        assert lo <= 1 <= hi and lo <= out[f"{kind}_ratio"] <= hi, (kind, out[f"{kind}_range"])
        assert verdict(out, kind) == "same"
        assert ratio_text(out, kind).startswith("same as the base within noise (")
    assert out["repeats"] == INTERACTIVE.repeats == len(out["model"]["prefill_runs"]) >= 6
    assert "same as the base within noise" in short(out) and "x the base" not in short(out)


def speed_of(model_runs: list[float], base_runs: list[float]) -> dict:
    """A ``compare`` result from runs' tokens/s (both kinds the same), to read the verdict on known runs."""
    m = {"prefill_runs": model_runs, "decode_runs": model_runs}
    b = {"prefill_runs": base_runs, "decode_runs": base_runs}
    rng = ratio_range(model_runs, base_runs)
    r = statistics.median(model_runs) / statistics.median(base_runs)
    return {"model": m, "base": b, "repeats": len(model_runs), "prefill_ratio": r, "decode_ratio": r,
            "prefill_range": rng, "decode_range": rng}


@pytest.mark.parametrize("model_runs, base_runs, want", [
    ([130, 140, 150], [100, 110, 120], "1.27x the base, faster (1.08-1.50x over 3 runs each)"),
    ([60, 70, 80], [100, 110, 120], "0.64x the base, slower (0.50-0.80x over 3 runs each)"),
    ([115, 140, 150], [100, 120, 110], "same as the base within noise (0.96-1.50x over 3 runs each)"),
    ([100, 100, 100], [100, 100, 100], "same as the base within noise (1.00-1.00x over 3 runs each)"),
])
def test_a_ratio_is_shown_only_when_every_run_says_so(model_runs, base_runs, want):
    out = speed_of(model_runs, base_runs)
    assert ratio_text(out, "prefill") == want
    # one overlapping run (the slowest model run no faster than the fastest base run) makes it noise
    assert verdict(out, "decode") == ("faster" if min(model_runs) > max(base_runs) else
                                      "slower" if max(model_runs) < min(base_runs) else "same")


def test_a_stored_ratio_without_runs_says_its_noise_is_unknown():
    old = {"model": {"prefill_tok_s": 2.0}, "base": {}, "prefill_ratio": 0.13, "decode_ratio": 1.0}
    assert verdict(old, "prefill") == "unknown"
    assert ratio_text(old, "prefill") == "0.13x the base (one run: noise not measured)"


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
    assert f"| this model / base | {ratio_text(res.speed, 'prefill')} | {ratio_text(res.speed, 'decode')} |" in card
    assert f"Speed: prefill {ratio_text(res.speed, 'prefill')}, decode {ratio_text(res.speed, 'decode')}; " in card
