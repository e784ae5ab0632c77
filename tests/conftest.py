"""Shared fixtures: tiny real Llama families built in seconds, saved as real HF folders."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import yaml

from gptailor.demo import build_tokenizer


def make_tiny_family(root: Path, n_layers: int = 4, members=("math", "code"), tie: bool = False,
                     seed: int = 0, model_type: str = "llama") -> Path:
    """A random base and finetunes (base + noise) as HF folders, plus family.yaml; returns the spec path."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = build_tokenizer()
    cfg = AutoConfig.for_model(
        model_type, vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=tie, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(cfg)
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    for k, m in enumerate(members):
        torch.manual_seed(seed + 1 + k)
        ft = AutoModelForCausalLM.from_config(cfg)
        ft.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in ft.parameters():
                p.add_(0.05 * torch.randn_like(p))
        ft.save_pretrained(root / m)
        tok.save_pretrained(root / m)
    spec = {"name": "tiny", "base": "base", "candidates": {m: m for m in members}, "dtype": "float32",
            "device": "cpu"}
    (root / "family.yaml").write_text(yaml.safe_dump(spec))
    return root / "family.yaml"


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> Path:
    return make_tiny_family(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_family(tiny_spec):
    from gptailor.family import Family

    return Family.from_spec(tiny_spec)
