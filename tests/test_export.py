import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from gptailor.export.hf import ExportError, export
from gptailor.export.mergekit import mergekit_config, mergekit_yaml
from gptailor.plan import Plan
from gptailor.stitch import Stitcher


@pytest.mark.parametrize("text", ["0:base 1:math 2:drop 3:code",
                                  "0:merge[ties](math=.5,code=.5) 1:drop 2:base 3:math"])
def test_round_trip_same_logits(tiny_family, tmp_path, text):
    plan = Plan.from_text(text, family="tiny")
    out = export(tiny_family, plan, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 3
    ids = torch.randint(7, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = Stitcher(tiny_family).build(plan)(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-6)
    a = reloaded.generate(ids[:1], max_new_tokens=8, do_sample=False)
    b = reloaded.generate(ids[:1], max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(a, b)
    assert Plan.from_json((out / "plan.json").read_text()) == plan
    assert AutoTokenizer.from_pretrained(out)("ab")["input_ids"] == tiny_family.tokenizer("ab")["input_ids"]
    assert (out / "generation_config.json").exists() and list(out.glob("*.safetensors"))
    card = (out / "README.md").read_text()
    assert plan.to_text() in card and "Layers kept: 3 of 4" in card


def test_refuses_non_empty_folder_unless_overwrite(tiny_family, tmp_path):
    plan = Plan.identity(4, family="tiny")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        export(tiny_family, plan, tmp_path / "busy")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]
    export(tiny_family, plan, tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "busy").config.num_hidden_layers == 4
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        export(tiny_family, plan, tmp_path / "file")


def test_mergekit_config_passthrough_and_merge(tiny_family):
    src = tiny_family.spec.source
    cfg = mergekit_config(tiny_family, Plan.from_text("0:base 1:math 2:drop 3:base"))
    assert cfg["merge_method"] == "passthrough" and cfg["base_model"] == src("base")
    assert cfg["slices"] == [{"sources": [{"model": src("base"), "layer_range": [0, 1]}]},
                             {"sources": [{"model": src("math"), "layer_range": [1, 2]}]},
                             {"sources": [{"model": src("base"), "layer_range": [3, 4]}]}]
    cfg = mergekit_config(tiny_family, Plan.from_text("0:base 1:math 2:merge[ties,density=.3](math=1,code=2) 3:base"))
    assert cfg["merge_method"] == "ties"
    assert cfg["slices"][2]["sources"] == [  # mergekit reads the base tensor from the slice; listed first
        {"model": src("base"), "layer_range": [2, 3]},
        {"model": src("math"), "layer_range": [2, 3], "parameters": {"weight": 1.0, "density": 0.3}},
        {"model": src("code"), "layer_range": [2, 3], "parameters": {"weight": 2.0, "density": 0.3}}]
    assert cfg["slices"][1]["sources"] == [
        {"model": src("base"), "layer_range": [1, 2]},
        {"model": src("math"), "layer_range": [1, 2], "parameters": {"weight": 1.0, "density": 1.0}}]
    assert cfg["slices"][0]["sources"] == [
        {"model": src("base"), "layer_range": [0, 1], "parameters": {"weight": 1.0, "density": 1.0}}]


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_mergekit_config_dare(tiny_family, method):
    """mergekit's own defaults for DARE (no normalising, L1 rescale), written out; the density always
    (mergekit's default, 1, would drop nothing); picks with density 1; the base as each slice's base."""
    src = tiny_family.spec.source
    plan = Plan.from_text(f"0:base 1:math 2:merge[{method}](math=1,code=.5) 3:base")
    cfg = mergekit_config(tiny_family, plan)
    assert cfg["merge_method"] == method and cfg["parameters"] == {"normalize": False, "rescale": True}
    assert cfg["slices"][1]["sources"] == [
        {"model": src("base"), "layer_range": [1, 2]},
        {"model": src("math"), "layer_range": [1, 2], "parameters": {"weight": 1.0, "density": 1.0}}]
    assert cfg["slices"][2]["sources"] == [
        {"model": src("base"), "layer_range": [2, 3]},
        {"model": src("math"), "layer_range": [2, 3], "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": src("code"), "layer_range": [2, 3], "parameters": {"weight": 0.5, "density": 0.5}}]
    other = mergekit_config(tiny_family, Plan.from_text(f"0:base 1:merge[{method},density=.2](math=1,code=1) 2:drop 3:base"))
    assert [s.get("parameters") for s in other["slices"][1]["sources"]] == [
        None, {"weight": 1.0, "density": 0.2}, {"weight": 1.0, "density": 0.2}]
    text = mergekit_yaml(tiny_family, plan)
    assert yaml.safe_load(text) == cfg and f"# {method} draws random numbers" in text


@pytest.mark.parametrize("text,msg", [
    ("base merge(math=1,code=1) merge[ties](math=1,code=1) base", "mixes merge methods"),
    ("base merge[slerp](base=1,math=1) base base", "slerp"),
    ("math base base base", "embeddings from 'math'; member 'math' there has embeddings unlike"),
    ("base base base merge(math=1,code=1)", "final norm from 'math'; member 'math'"),
])
def test_mergekit_refuses_what_it_cannot_express(tiny_family, text, msg):
    with pytest.raises(ExportError, match=msg):
        mergekit_config(tiny_family, Plan.from_text(text))


def test_export_writes_yaml_even_when_not_expressible(tiny_family, tmp_path):
    plan = Plan.from_text("merge(math=1,code=1) merge[ties](math=1,code=1) base base")
    out = export(tiny_family, plan, tmp_path / "m")
    text = (out / "mergekit.yaml").read_text()
    assert "not expressible" in text
    yaml.safe_load(text)  # still valid YAML (comments only)
    assert json.loads((out / "plan.json").read_text())["family"] == "tiny"


def test_bf16_family_exports_bf16_by_default(tmp_path, capsys):
    from gptailor.weights.checkpoint import Checkpoint
    from gptailor.cli import main
    from gptailor.family.family import Family

    from conftest import make_tiny_family

    spec = make_tiny_family(tmp_path / "fam", dtype=torch.bfloat16)
    fam = Family.from_spec(spec)  # searched in float32 on the CPU
    assert fam.dtype == torch.float32
    plan = Plan.from_text("0:base 1:math 2:merge[ties](math=1,code=1) 3:base", family="tiny")
    out = export(fam, plan, tmp_path / "bf16")
    ckpt = Checkpoint(out)
    assert {ckpt.dtype(n) for n in ckpt.headers} == {torch.bfloat16}
    assert "dtype: bfloat16" in (out / "mergekit.yaml").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16
    want = Stitcher(fam, dtype=torch.bfloat16).build(plan)
    for (k, a), b in zip(want.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), k  # picks as stored, merges rounded once
    assert torch.equal(reloaded.model.layers[1].mlp.up_proj.weight, fam.raw_layer("math", 1)["mlp.up_proj.weight"])
    out32 = export(fam, plan, tmp_path / "fp32", dtype="float32")
    assert {Checkpoint(out32).dtype(n) for n in Checkpoint(out32).headers} == {torch.float32}
    assert main(["export", "-f", str(spec), "-p", plan.to_text(), "-o", str(tmp_path / "cli"), "--no-eval",
                 "--dtype", "float16"]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "cli").dtype == torch.float16
    with pytest.raises(ExportError, match="dtype 'int3'"):
        export(fam, plan, tmp_path / "bad", dtype="int3")
