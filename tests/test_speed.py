"""Measured prefill/decode speed: the timed loop is real greedy decoding, and it reaches every report."""
from __future__ import annotations

import json

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
    pre, dec, toks = _run(model, ids, s.new_tokens)
    seq = ids  # independent computation: greedy without a KV cache, the whole sequence re-run each step
    with torch.no_grad():
        for _ in range(6):
            nxt = model(input_ids=seq, use_cache=False).logits[:, -1:].argmax(-1)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(toks, seq[:, 12:]) and pre > 0 and dec > 0


def test_speed_reports_tokens_per_second_against_the_base(demo_family):
    st = Stitcher(demo_family)
    base = st.build(Plan.identity(8, family="demo"))
    small = st.build(Plan.from_text("0:base 1:base 2:drop 3:drop 4:drop 5:drop 6:base 7:base"))
    s = SpeedSettings(prompt_len=16, new_tokens=4, repeats=1)
    out = compare(small, base, s)
    assert out["prefill_ratio"] == out["model"]["prefill_tok_s"] / out["base"]["prefill_tok_s"]
    assert out["model"]["prompt_len"] == 16 and out["model"]["dtype"] == "float32"
    assert measure(base, s).prefill_tok_s > 0


def test_cli_eval_reports_speed_and_no_speed_skips_it(run_cli):
    plan = "0:base 1:math 2:drop 3:facts 4:base 5:strings 6:base 7:base"
    res = json.loads(run_cli("eval", "--family", "demo", "-p", plan, "--fidelity", "2", "--json"))
    speed = res["speed"]
    assert speed["model"]["prefill_tok_s"] > 0 and speed["base"]["decode_tok_s"] > 0
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
