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


def test_kept_layers_config_by_hand():
    """Stitched models and one-layer probes slice the config by one rule; values worked out by hand."""
    from transformers import Qwen2Config

    from gptailor.family.compat import kept_layers_config, one_layer_config

    cfg = Qwen2Config(num_hidden_layers=6, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                      num_key_value_heads=1, use_sliding_window=True, sliding_window=8, max_window_layers=3)
    kinds = list(cfg.layer_types)  # positions >= max_window_layers slide
    assert kinds == ["full_attention"] * 3 + ["sliding_attention"] * 3
    kept = kept_layers_config(cfg, [0, 2, 4, 5])
    assert kept.num_hidden_layers == 4 and kept.max_window_layers == 2
    assert kept.layer_types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    one = one_layer_config(cfg, 4)
    assert one.num_hidden_layers == 1 and one.max_window_layers == 0 and one.layer_types == ["sliding_attention"]
    assert cfg.num_hidden_layers == 6 and cfg.layer_types == kinds  # the family's own config is untouched
