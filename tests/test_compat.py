"""One architecture rule for both ways a family is read: loaded (transformers config) and inspected (config.json)."""
import pytest
from transformers import GPT2Config

from gptailor.family.compat import SUPPORTED_MODEL_TYPES
from gptailor.family.family import Family
from gptailor.family.inspect import inspect_family
from gptailor.family.spec import FamilyError, FamilySpec


def test_unsupported_architecture_is_refused_the_same_way_loaded_or_inspected(tmp_path):
    GPT2Config(n_layer=2, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    spec = FamilySpec("g", str(tmp_path / "gpt2"), device="cpu")
    want = ("member 'base': architecture 'gpt2' is not supported yet; supported: llama, mistral, qwen2, qwen3 "
            "(Llama-layout decoders)")
    assert SUPPORTED_MODEL_TYPES == ("llama", "mistral", "qwen2", "qwen3")
    with pytest.raises(FamilyError) as loaded:
        Family.from_spec(spec)
    with pytest.raises(FamilyError) as inspected:
        inspect_family(spec)
    assert str(loaded.value) == str(inspected.value) == want
