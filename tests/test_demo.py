"""The shipped demo family: real weights in the repo, the targets of the engine issue."""
from pathlib import Path

import pytest

from gptailor import Evaluator, Family, Plan, load_suite
from gptailor.family.spec import DEMO_DIR


@pytest.fixture(scope="module")
def demo_eval():
    fam = Family.from_spec("demo", device="cpu")
    return Evaluator(fam, load_suite(fam.spec.suite_path()))


def test_demo_family_shape_and_size(demo_eval):
    fam = demo_eval.family
    assert fam.n_layers >= 8 and fam.member_names == ["base", "math", "strings", "facts"]
    assert fam.config.model_type == "llama"
    size = sum(p.stat().st_size for p in Path(DEMO_DIR).rglob("*") if p.is_file())
    assert size < 30 * 2**20, f"demo family is {size / 2**20:.1f} MiB"
    assert fam.tokenizer.chat_template and demo_eval.suite.names == ["math", "strings", "facts", "chat_ppl"]


def test_each_finetune_beats_the_base_on_its_skill_and_the_base_keeps_a_score(demo_eval):
    base = demo_eval.member_scores("base")
    for skill in ("math", "strings", "facts"):
        own = demo_eval.member_scores(skill)
        assert own[skill] >= base[skill] + 0.15, (skill, own[skill], base[skill])
        assert base[skill] >= 0.05, (skill, base[skill])


def test_naive_quarter_drop_loses_a_visible_amount(demo_eval):
    L = demo_eval.family.n_layers
    q = L // 4
    res = demo_eval.evaluate(Plan.drop_positions(L, range(L - q, L)))
    assert res.retention < 0.9, res.table()
