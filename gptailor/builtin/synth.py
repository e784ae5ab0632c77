"""Synthetic families at real model shapes: random weights, real configs, real file layouts.

Why: the product's cost and memory promises (bounded RAM whatever the members' size, a trial far
cheaper than writing and reloading a checkpoint) only mean something at the sizes users bring, and
no checkpoint can be downloaded here. A synthetic family has the exact config, tensor names, dtypes
(bfloat16), sharding and file sizes of a real one, so loading, stitching, merging, caching and the
forward pass cost what they would on the real thing. The weights are random (seeded, so a family is
rebuilt bit for bit): its *scores* mean nothing, only its time and memory do.

Members: the base is N(0, 0.02) weights (norms 1); each candidate is the base plus a small seeded
perturbation of every decoder layer (relative size ``delta``), with embeddings, final norm and head
equal to the base's -- as in a LoRA or decoder-only finetune, so the mergekit YAML applies.

    python -m gptailor.builtin synth --shape llama-3.2-1b --members 4 --out /data/synth-1b
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

INIT_STD = 0.02


@dataclass(frozen=True)
class Shape:
    """A published model's architecture, as its ``config.json`` states it."""

    model_type: str  # "llama" or "qwen2"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    extra: dict[str, Any] = field(default_factory=dict)
    real_params: int | None = None  # the published model's parameter count, when known
    like: str = ""


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}

SHAPES: dict[str, Shape] = {
    "smollm2-135m": Shape("llama", 576, 1536, 30, 9, 3, 49152, True, 100000.0, 1e-5, 8192,
                          real_params=134_515_008, like="HuggingFaceTB/SmolLM2-135M"),
    "qwen2.5-0.5b": Shape("qwen2", 896, 4864, 24, 14, 2, 151936, True, 1000000.0, 1e-6, 32768,
                          real_params=494_032_768, like="Qwen/Qwen2.5-0.5B"),
    "llama-3.2-1b": Shape("llama", 2048, 8192, 16, 32, 8, 128256, True, 500000.0, 1e-5, 131072,
                          extra={"rope_scaling": LLAMA3_ROPE, "head_dim": 64},
                          real_params=1_235_814_400, like="meta-llama/Llama-3.2-1B"),
    "llama-3-8b": Shape("llama", 4096, 14336, 32, 32, 8, 128256, False, 500000.0, 1e-5, 8192,
                        real_params=8_030_261_248, like="meta-llama/Meta-Llama-3-8B"),
    # for tests: the same code path in a second
    "tiny": Shape("llama", 64, 160, 4, 4, 2, 512, False, 10000.0, 1e-5, 512),
}


class SynthError(ValueError):
    """A synthetic-family request that cannot be built (unknown shape, bad member count)."""


def shape_of(name: str) -> Shape:
    try:
        return SHAPES[name]
    except KeyError:
        raise SynthError(f"unknown shape {name!r}; choose one of {', '.join(SHAPES)}") from None


def model_config(shape: Shape, tokenizer=None):
    """The transformers config of ``shape`` (bfloat16), with the tokenizer's special ids when given."""
    from transformers import AutoConfig

    ids = {}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    cfg = AutoConfig.for_model(
        shape.model_type, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, vocab_size=shape.vocab_size,
        tie_word_embeddings=shape.tie_word_embeddings, rope_theta=shape.rope_theta,
        rms_norm_eps=shape.rms_norm_eps, max_position_embeddings=shape.max_position_embeddings,
        hidden_act="silu", **shape.extra, **ids)
    cfg.dtype = torch.bfloat16
    cfg.architectures = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[shape.model_type]]
    return cfg


def tensor_shapes(config) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape as ``save_pretrained`` writes them (a tied head is not written)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    return shapes


def param_count(config) -> int:
    """Parameters of the model as transformers builds it (tied embeddings counted once)."""
    return sum(int(torch.Size(s).numel()) for s in tensor_shapes(config).values())


def _generator(*key: object) -> torch.Generator:
    seed = int.from_bytes(hashlib.sha256("/".join(map(str, key)).encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(seed & (2 ** 63 - 1))


def _is_layer(name: str) -> bool:
    return ".layers." in name


def base_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The base's tensor: norms are ones, biases small, matrices N(0, 0.02) -- a fresh init's scale."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    std = INIT_STD / 10 if name.endswith(".bias") else INIT_STD
    return (torch.randn(shape, generator=_generator(seed, "base", name)) * std).to(torch.bfloat16)


def member_tensor(name: str, shape: tuple[int, ...], member: str, seed: int, delta: float) -> torch.Tensor:
    """A candidate's tensor: the base's, plus a seeded perturbation on decoder layers only."""
    base = base_tensor(name, shape, seed)
    if member == "base" or not _is_layer(name) or name.endswith("norm.weight"):
        return base
    scale = delta * (INIT_STD / 10 if name.endswith(".bias") else INIT_STD)
    noise = torch.randn(shape, generator=_generator(seed, member, name)) * scale
    return (base.float() + noise).to(torch.bfloat16)


def _shards(shapes: dict[str, tuple[int, ...]], max_bytes: int) -> list[list[str]]:
    """Tensor names grouped into shards of at most ``max_bytes`` (bfloat16), in order."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shp in shapes.items():
        nbytes = 2 * int(torch.Size(shp).numel())
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_member(folder: Path, config, tokenizer, member: str, seed: int, delta: float,
                 shard_bytes: int) -> int:
    """Write one member (config, tokenizer, bfloat16 safetensors, sharded as HF does); its bytes."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    GenerationConfig(max_new_tokens=16, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
                     ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shapes = tensor_shapes(config)
    groups = _shards(shapes, shard_bytes)
    total, weight_map = 0, {}
    for i, names in enumerate(groups):
        fname = "model.safetensors" if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: member_tensor(n, shapes[n], member, seed, delta) for n in names}
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        total += sum(2 * t.numel() for t in tensors.values())
        weight_map.update({n: fname for n in names})
        del tensors
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def synth(shape: str, members: int, out: Path, seed: int = 0, delta: float = 0.05,
          shard_gb: float = 2.0, log: Callable[[str], None] = print) -> Path:
    """Write a ``members``-member family of ``shape`` (base + members-1 candidates) and its spec.

    The suite is the demo's (character-level prompts; the tokenizer is the demo's, whose ids fit any
    vocabulary): with random weights only its multiple-choice and perplexity tasks score above zero,
    which is all a cost or memory benchmark needs.
    """
    from gptailor.family.spec import DEMO_DIR
    from gptailor.builtin.tokenizer import build_tokenizer

    spec_shape = shape_of(shape)
    if members < 1:
        raise SynthError(f"--members {members}: a family needs at least 1 member (the base)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = spec_shape.max_position_embeddings
    config = model_config(spec_shape, tokenizer)
    names = ["base"] + [f"ft{i}" for i in range(1, members)]
    for name in names:
        t = time.perf_counter()
        nbytes = write_member(out / name, config, tokenizer, name, seed, delta, int(shard_gb * 2 ** 30))
        log(f"{name}: {nbytes / 2 ** 30:.2f} GiB in {time.perf_counter() - t:.1f} s")
    tasks = out / "tasks"
    if tasks.exists():
        shutil.rmtree(tasks)
    shutil.copytree(DEMO_DIR / "tasks", tasks)
    spec = {"name": f"synth-{shape}", "base": "base", "candidates": {n: n for n in names[1:]},
            "dtype": "auto", "device": "auto", "suite": "tasks/suite.yaml"}
    import yaml

    note = (f"# Synthetic family: shape {shape} (like {spec_shape.like or 'nothing published'}), seed {seed}, "
            f"delta {delta}.\n# RANDOM WEIGHTS: for cost and memory benchmarks only; its scores mean nothing.\n"
            f"# Rebuild: python -m gptailor.builtin synth --shape {shape} --members {members} --seed {seed} "
            f"--out {out}\n")
    (out / "family.yaml").write_text(note + yaml.safe_dump(spec, sort_keys=False))
    return out
