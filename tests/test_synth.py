"""Synthetic real-shape families: real configs, real file layouts, deterministic random weights."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from gptailor import Family, Plan
from gptailor.builtin.cli import main as demo_main
from gptailor.stitch import Stitcher
from gptailor.builtin.synth import SHAPES, SynthError, model_config, param_count, synth


@pytest.mark.parametrize("name", [n for n, s in SHAPES.items() if s.real_params])
def test_shapes_have_the_published_models_parameter_counts(name):
    # The published counts (model cards / safetensors totals) are independent of our config code.
    assert param_count(model_config(SHAPES[name])) == SHAPES[name].real_params


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    synth("tiny", 3, out, seed=3, shard_gb=0.0002, log=lambda *_: None)
    return out


def test_synth_is_deterministic_sharded_and_bfloat16(tiny, tmp_path):
    again = tmp_path / "again"
    synth("tiny", 3, again, seed=3, shard_gb=0.0002, log=lambda *_: None)
    assert _digest(tiny) == _digest(again)
    other = tmp_path / "other"
    synth("tiny", 2, other, seed=4, shard_gb=0.0002, log=lambda *_: None)
    assert _digest(other)["base/model-00001-of-00003.safetensors"] != _digest(tiny)["base/model-00001-of-00003.safetensors"]
    index = json.loads((tiny / "ft1" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    fam = Family.from_spec(tiny)
    assert fam.member_names == ["base", "ft1", "ft2"] and fam.checkpoint_dtype == torch.bfloat16
    assert "RANDOM WEIGHTS" in (tiny / "family.yaml").read_text()


def test_candidates_differ_from_the_base_only_in_decoder_layers(tiny):
    fam = Family.from_spec(tiny)
    base, ft = fam.checkpoints["base"], fam.checkpoints["ft1"]
    for name in base.headers:
        same = torch.equal(base.get(name), ft.get(name))
        if ".layers." in name and not name.endswith("norm.weight"):
            assert not same, name
            rel = (ft.get(name).float() - base.get(name).float()).norm() / base.get(name).float().norm()
            assert 0.01 < rel < 0.2, (name, rel)  # a finetune-sized change, not a new model
        else:
            assert same, name


def test_a_members_identity_plan_matches_from_pretrained(tiny):
    # Independent route: transformers' own loader on the member folder (sharded bf16 -> float32).
    from transformers import AutoModelForCausalLM

    fam = Family.from_spec(tiny, dtype="float32")
    plan = Plan.identity(fam.n_layers, "ft2", fam.name)
    ours = Stitcher(fam).build(plan, shared_from="ft2")
    ref = AutoModelForCausalLM.from_pretrained(tiny / "ft2", dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 17, 33, 60, 2]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)


def test_bad_requests_give_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SynthError, match="unknown shape 'llama-9b'"):
        synth("llama-9b", 2, tmp_path / "x")
    with pytest.raises(SystemExit) as e:
        demo_main(["synth", "--shape", "tiny", "--members", "0", "--out", str(tmp_path / "y")])
    assert e.value.code == 2 and "at least 1 member" in capsys.readouterr().err
