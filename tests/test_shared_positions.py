"""Positions where every finetune left the base's layer alone offer only keep-or-drop in the search spaces.

A LoRA on the top layers (the smol family: 22 of 30 positions untouched) or a finetune with frozen lower
layers makes picks and merges there no-ops; the spaces must not spend trials on them, and collapsing
them must not change any model.
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import make_tiny_family, save_model
from gptailor import Family, Plan
from gptailor.plan import Op
from gptailor.search.space import make_space
from gptailor.stitch import Stitcher

FROZEN = {"math": (0, 2), "code": (0,)}  # positions each finetune copies from the base


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen")
    spec = make_tiny_family(root, n_layers=4, layers_only=True)
    base = AutoModelForCausalLM.from_pretrained(root / "base")
    for member, frozen in FROZEN.items():
        ft = AutoModelForCausalLM.from_pretrained(root / member)
        for i in frozen:
            ft.model.layers[i].load_state_dict(base.model.layers[i].state_dict())
        save_model(ft, root / member)
    return Family.from_spec(spec)


def logits(family: Family, plan: Plan) -> torch.Tensor:
    ids = torch.randint(7, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return Stitcher(family).build(plan)(input_ids=ids).logits


def test_shared_positions_are_those_every_finetune_left_alone(family):
    assert family.layer_equals_base("math", 2) and not family.layer_equals_base("code", 2)
    assert not family.layer_equals_base("math", 1) and family.layer_equals_base("code", 0)
    assert family.shared_positions() == [0]  # 2 is frozen in math only


def test_layerwise_space_offers_keep_or_drop_where_members_are_shared(family):
    space = make_space("layerwise", family, 1)
    names = set(space.cs.keys())
    assert tuple(space.cs["op_000"].choices) == ("drop", "base")
    assert not any(n.startswith(("method_000", "w_000_")) for n in names)
    assert set(space.cs["op_001"].choices) == {"drop", "base", "math", "code", "merge"} and "method_001" in names
    for cfg in space.cs.sample_configuration(40):
        assert space.decode(cfg).ops[0].kind in ("drop", "pick") and space.decode(cfg).ops[0].member in (None, "base")
    assert space.describe()["shared_positions"] == [0]


@pytest.mark.parametrize("name,text", [
    ("layerwise", "0:merge(math=.5,code=.5) 1:code 2:math 3:drop"),
    ("layerwise", "0:math 1:drop 2:merge[ties](math=1,code=.5) 3:base"),
    ("paper", "0:merge[task_arithmetic](math=.5,code=.5) 1:drop 2:code 3:merge[task_arithmetic](math=.5,code=.5)"),
    ("paper", "0:code 1:math 2:drop 3:base"),
])
def test_collapsing_a_shared_position_keeps_the_model(family, name, text):
    """A plan that picks or merges members at a shared position encodes to the base's layer there, and
    the decoded plan's logits equal the original plan's (the collapse loses nothing)."""
    plan = Plan.from_text(text, "tiny")
    space = make_space(name, family, 1)
    cfg = space.encode(plan)
    assert cfg is not None
    back = space.decode(cfg)
    assert back.key() == Plan((Op.pick("base"), *plan.ops[1:]), "tiny").key()  # only position 0 changed
    assert torch.allclose(logits(family, back), logits(family, plan), atol=1e-6)
    if name == "paper":
        assert not any(n.startswith("mask_000_") for n in space.cs.keys())


def test_a_family_without_shared_positions_keeps_the_whole_space(tiny_family):
    space = make_space("layerwise", tiny_family, 1)
    assert tiny_family.shared_positions() == []
    assert all("merge" in space.cs[f"op_{i:03d}"].choices for i in range(tiny_family.n_layers))
