"""Opening families: lazy per-layer reads (sharded too), bounded memory whatever the dtypes, the full
compatibility check, clear one-line errors for broken members, and ``info`` from headers only."""
import gc
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from gptailor.cli import main
from gptailor.family.compat import COMPAT_KEYS
from gptailor.family.family import Family
from gptailor.family.spec import FamilyError, FamilySpec
from gptailor.family.inspect import inspect_family
from gptailor.plan import Plan
from gptailor.stitch import Stitcher

from conftest import make_tiny_family, save_model, tiny_config

ROOT = Path(__file__).resolve().parents[1]
IDS = torch.randint(7, 100, (2, 9), generator=torch.Generator().manual_seed(0))


def logits(fam: Family, text: str, **kw) -> torch.Tensor:
    with torch.no_grad():
        return Stitcher(fam, **kw).build(Plan.from_text(text)).forward(input_ids=IDS).logits


# ----------------------------------------------------------------------------- lazy reads
def test_sharded_checkpoints_give_the_same_model(tmp_path, tiny_spec):
    spec = make_tiny_family(tmp_path, max_shard_size="40KB")  # same seed as tiny_spec: same weights
    fam, flat = Family.from_spec(spec), Family.from_spec(tiny_spec)
    assert (tmp_path / "math" / "model.safetensors.index.json").exists()
    assert len(set(fam.checkpoints["math"].files.values())) > 3  # really sharded
    for text in ("0:base 1:math 2:drop 3:code", "0:merge[ties](math=1,code=2) 1:code 2:base 3:drop"):
        assert torch.equal(logits(fam, text), logits(flat, text))


def test_bf16_checkpoints_in_float32_layers_read_only_when_used(tmp_path):
    spec = make_tiny_family(tmp_path, dtype=torch.bfloat16)
    fam = Family.from_spec(spec)  # dtype float32 on the CPU: every used layer needs a conversion
    assert fam.checkpoint_dtype == torch.bfloat16 and fam.dtype == torch.float32
    assert fam.resident_bytes() == 0 and len(fam.cache) == 0  # nothing read at load
    model = Stitcher(fam).build(Plan.from_text("0:base 1:math 2:drop 3:drop"))
    assert model.model.layers[1].mlp.up_proj.weight.dtype == torch.float32
    assert sorted(k[1:3] for k in fam.cache.data) == [("base", 0), ("math", 1)]
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "math", dtype=torch.float32)
    assert torch.equal(fam.layer_state("math", 1)["mlp.up_proj.weight"], ref.model.layers[1].mlp.up_proj.weight)


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


@pytest.fixture(scope="module")
def big_bf16_spec(tmp_path_factory):
    """4 members x 8 layers of hidden 512 in bfloat16: 27M params each; a float32 copy of every
    member's layers would be ~440 MB."""
    root = tmp_path_factory.mktemp("big")
    return make_tiny_family(root, n_layers=8, members=("math", "code", "chat"), dtype=torch.bfloat16,
                            hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=8)


def test_bf16_family_in_float32_holds_no_float32_copy_of_every_member(big_bf16_spec):
    rss0 = _rss()
    fam = Family.from_spec(big_bf16_spec)  # float32 compute on the CPU
    full_fp32 = 4 * fam.n_layers * fam.layer_params() * 4  # what from_pretrained(dtype=float32) held
    assert full_fp32 > 400 * 2 ** 20
    assert _rss() - rss0 < 0.1 * full_fp32  # opening reads headers only
    plan = Plan.from_text("0:base 1:math 2:drop 3:code 4:drop 5:chat 6:drop 7:base")
    with torch.no_grad():
        Stitcher(fam).build(plan)(input_ids=IDS)
    used = 5 * fam.layer_params() * 4  # the five used layers, converted
    assert used <= fam.resident_bytes() < used + 2 ** 20 * 4  # plus the base's embeddings and norm
    grew = _rss() - rss0
    assert grew < 0.5 * full_fp32, f"RSS grew {grew / 2 ** 20:.0f} MB; a full float32 copy is {full_fp32 / 2 ** 20:.0f} MB"


def test_cache_budget_bounds_converted_and_merged_layers(big_bf16_spec):
    fam = Family.from_spec(big_bf16_spec, cache_mb=60)  # about four float32 layers
    st = Stitcher(fam)
    for member in ("base", "math", "code", "chat"):
        st.build(Plan.identity(8, member))
        st.build(Plan.from_text(f"merge(base@1=1,{member}=1) " + "drop " * 7))
        assert fam.cache.nbytes <= 60 * 2 ** 20
    assert fam.resident_bytes() <= 60 * 2 ** 20 + 2 ** 20 * 4


# ----------------------------------------------------------------------------- compatibility
@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """One tiny 2-layer base folder per architecture used below."""
    root = tmp_path_factory.mktemp("bases")
    made = {}
    for mt, kw in {"llama": {}, "mistral": {}, "qwen2": {"sliding_window": 64}}.items():
        made[mt] = save_model(AutoModelForCausalLM.from_config(tiny_config(mt, 2, **kw)), root / mt)
    return made


FIELDS = [  # (architecture, field, member's value); the base has the tiny config's value
    ("llama", "hidden_size", 48), ("llama", "num_hidden_layers", 3), ("llama", "intermediate_size", 96),
    ("llama", "num_attention_heads", 8), ("llama", "num_key_value_heads", 4), ("llama", "head_dim", 16),
    ("llama", "hidden_act", "gelu"), ("llama", "vocab_size", 512), ("llama", "tie_word_embeddings", True),
    ("llama", "rms_norm_eps", 1e-5), ("llama", "rope_parameters", {"rope_type": "default", "rope_theta": 5e5}),
    ("llama", "rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    ("llama", "attention_bias", True), ("llama", "mlp_bias", True),
    ("mistral", "sliding_window", 64), ("qwen2", "use_sliding_window", True),
]


@pytest.mark.parametrize("arch,field,value", FIELDS, ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(FIELDS)])
def test_each_compat_field_mismatch_is_refused_naming_both_values(bases, tmp_path, arch, field, value):
    base_cfg = AutoModelForCausalLM.from_pretrained(bases[arch]).config
    kw = {"sliding_window": 64} if arch == "qwen2" else {}
    cfg = tiny_config(arch, 2, **{**kw, field: value})
    save_model(AutoModelForCausalLM.from_config(cfg), tmp_path / "odd")
    spec = FamilySpec("x", str(bases[arch]), {"odd": str(tmp_path / "odd")}, device="cpu")
    with pytest.raises(FamilyError) as err:
        Family.from_spec(spec)
    msg = str(err.value)
    want, got = getattr(base_cfg, field), getattr(AutoConfig.from_pretrained(tmp_path / "odd"), field)
    assert want != got
    assert msg.startswith(f"member 'odd' has {field}={got} but the base has {field}={want}"), msg
    assert "\n" not in msg
    with pytest.raises(FamilyError, match=f"^member 'odd' has {field}="):  # info reads config.json itself
        inspect_family(spec)


def test_compat_keys_cover_what_changes_a_layer():
    for key in ("rope_parameters", "rms_norm_eps", "head_dim", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "hidden_act", "vocab_size", "tie_word_embeddings", "attention_bias",
                "mlp_bias", "sliding_window", "use_sliding_window", "hidden_size", "num_hidden_layers"):
        assert key in COMPAT_KEYS


def test_switched_off_sliding_window_size_is_not_a_difference(bases, tmp_path):
    cfg = tiny_config("qwen2", 2, sliding_window=4096)  # use_sliding_window is False in both
    save_model(AutoModelForCausalLM.from_config(cfg), tmp_path / "ok")
    Family.from_spec(FamilySpec("x", str(bases["qwen2"]), {"ok": str(tmp_path / "ok")}, device="cpu"))


def _broken(tmp_path, bases, name: str) -> FamilySpec:
    return FamilySpec("x", str(bases["llama"]), {name: str(tmp_path / name)}, device="cpu")


def test_weights_of_the_wrong_width_under_a_matching_config(bases, tmp_path):
    save_model(AutoModelForCausalLM.from_config(tiny_config("llama", 2, intermediate_size=48)), tmp_path / "wide")
    shutil.copy(bases["llama"] / "config.json", tmp_path / "wide" / "config.json")
    with pytest.raises(FamilyError, match=r"^member 'wide': model\.layers\.0\.mlp\.\w+_proj\.weight in \S+model\."
                                          r"safetensors has shape \[\d+, \d+\] but config\.json implies "
                                          r"\[\d+, \d+\]; the weights do not match the config") as err:
        Family.from_spec(_broken(tmp_path, bases, "wide"))
    assert "48" in str(err.value) and "\n" not in str(err.value)


def test_garbage_weights_file(bases, tmp_path):
    shutil.copytree(bases["llama"], tmp_path / "junk")
    (tmp_path / "junk" / "model.safetensors").write_text("<html>rate limited</html>" * 10)
    with pytest.raises(FamilyError, match=r"^member 'junk': \S+junk/model\.safetensors is not a safetensors file "
                                          r"\(no valid header\); re-download it or re-save"):
        Family.from_spec(_broken(tmp_path, bases, "junk"))


def test_truncated_weights_file_and_pytorch_bin_only(bases, tmp_path):
    shutil.copytree(bases["llama"], tmp_path / "cut")
    data = (tmp_path / "cut" / "model.safetensors").read_bytes()
    (tmp_path / "cut" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FamilyError, match=r"member 'cut': .*is not a valid safetensors file .*past the end"):
        Family.from_spec(_broken(tmp_path, bases, "cut"))
    shutil.copytree(bases["llama"], tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").rename(tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(FamilyError, match=r"member 'bin': .*has no model\.safetensors .*\(found pytorch_model\.bin\)"
                                          r"; GPTailor reads safetensors only"):
        Family.from_spec(_broken(tmp_path, bases, "bin"))


def test_device_banana_is_one_line_error(tmp_path, bases, capsys):
    with pytest.raises(FamilyError, match=r"device 'banana' is not a torch device; use auto, cpu, cuda"):
        FamilySpec.from_dict({"name": "x", "base": str(bases["llama"]), "device": "banana"})
    (tmp_path / "family.yaml").write_text(yaml.safe_dump({"name": "x", "base": str(bases["llama"]),
                                                          "device": "banana"}))
    assert main(["info", "--family", str(tmp_path / "family.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device 'banana'") and err.count("\n") == 1 and "Traceback" not in err


def test_broken_member_through_the_cli_is_one_line(tmp_path, bases, capsys):
    shutil.copytree(bases["llama"], tmp_path / "junk")
    (tmp_path / "junk" / "model.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "family.yaml").write_text(yaml.safe_dump({"name": "x", "base": str(bases["llama"]),
                                                          "candidates": {"junk": "junk"}, "device": "cpu"}))
    assert main(["info", "--family", str(tmp_path / "family.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: member 'junk':") and "safetensors" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- info
INSPECT = """
import json, sys
from gptailor.weights.checkpoint import Checkpoint

tensors = []  # every tensor a checkpoint hands out (its data is then read from the mapped file)
_get = Checkpoint.get
Checkpoint.get = lambda self, name: tensors.append(name) or _get(self, name)
from gptailor.family.inspect import inspect_family

def rchar():
    return int(next(line for line in open("/proc/self/io") if line.startswith("rchar")).split()[1])

before = rchar()
inspect_family(sys.argv[1])
print(json.dumps({"tensors": tensors, "bytes_read": rchar() - before,
                  "imported": [m for m in ("transformers", "tokenizers") if m in sys.modules]}))
"""


def test_info_reads_configs_and_headers_only(big_bf16_spec):
    """Why ``info`` answers in a second whatever the size: in a fresh process, it hands out no tensor,
    reads a sliver of the weight files (their headers) and imports neither transformers nor a tokenizer."""
    weights = sum(f.stat().st_size for f in big_bf16_spec.parent.glob("*/*.safetensors"))
    assert weights > 200 * 2 ** 20
    out = subprocess.run([sys.executable, "-c", INSPECT, str(big_bf16_spec)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["tensors"] == [] and seen["imported"] == []
    assert seen["bytes_read"] < 0.01 * weights, seen["bytes_read"]


def test_info_from_headers_matches_the_loaded_models(big_bf16_spec, capsys):
    info = inspect_family(big_bf16_spec)
    ref = AutoModelForCausalLM.from_pretrained(big_bf16_spec.parent / "base")
    assert info["params"] == sum(p.numel() for p in ref.parameters())
    assert info["params_per_layer"] == sum(p.numel() for p in ref.model.layers[0].parameters())
    assert info["checkpoint_dtypes"] == {m: "bfloat16" for m in ("base", "math", "code", "chat")}
    assert info["dtype"] == "float32" and info["cache_mb"] > 0
    assert json.loads(json.dumps(info)) == info  # stored as JSON by the study database
    assert main(["info", "--family", str(big_bf16_spec)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"cache budget \d+ MB", out) and "bfloat16" in out
