"""Which architectures are supported and whether members fit together: config keys, layer shapes, weights present."""
from __future__ import annotations

import copy
from typing import Any

import torch

from gptailor.weights.checkpoint import Checkpoint
from gptailor.family.spec import FamilyError

# Decoder-only architectures sharing the Llama layout (model.layers[i].self_attn / mlp, norms).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def check_architecture(member: str, model_type: object) -> None:
    """Refuse a member whose architecture is not a supported Llama-layout decoder."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise FamilyError(f"member {member!r}: architecture {model_type!r} is not supported yet; "
                          f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (Llama-layout decoders)")
# Config fields that change what a decoder layer (or the embeddings/head) computes: a member must match
# the base on every one. rope_parameters is transformers 5's home of rope_theta and rope scaling;
# rope_theta / rope_scaling are read too for configs that still carry them as attributes.
COMPAT_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
               "num_key_value_heads", "head_dim", "hidden_act", "vocab_size", "tie_word_embeddings",
               "rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling", "attention_bias", "mlp_bias",
               "use_sliding_window", "sliding_window", "layer_types")


def kept_layers_config(config, positions: list[int]):
    """The config of a model holding only the layers at ``positions`` (in order): ``num_hidden_layers``,
    each kept layer's kind (``layer_types``) and qwen2's sliding-window start (``max_window_layers``)."""
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = len(positions)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [config.layer_types[i] for i in positions]
    if getattr(cfg, "max_window_layers", None) is not None:  # qwen2: sliding window from this index on
        cfg.max_window_layers = sum(1 for i in positions if i < config.max_window_layers)
    return cfg


def one_layer_config(config, position: int = 0):
    """The config of a one-layer model whose layer is ``position``'s kind."""
    return kept_layers_config(config, [position])


def expected_shapes(config) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(layer-relative name -> shape, non-layer name -> shape) the architecture needs, from a one-layer
    model on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(one_layer_config(config))
    layer, shared = {}, {}
    for k, v in model.state_dict().items():
        if k.startswith(f"{LAYER_PREFIX}0."):
            layer[k[len(f"{LAYER_PREFIX}0."):]] = tuple(v.shape)
        else:
            shared[k] = tuple(v.shape)
    return layer, shared


def check_weights(member: str, ckpt: Checkpoint, config, layer_shapes: dict[str, tuple],
                  shared_shapes: dict[str, tuple]) -> None:
    """Every tensor the config implies is in the checkpoint with that shape (headers only)."""
    tied = bool(getattr(config, "tie_word_embeddings", False))
    wanted = [(k, s) for k, s in shared_shapes.items() if not (tied and k == "lm_head.weight")]
    for i in range(int(config.num_hidden_layers)):
        wanted += [(f"{LAYER_PREFIX}{i}.{k}", s) for k, s in layer_shapes.items()]
    for name, shape in wanted:
        if name not in ckpt:
            raise FamilyError(f"member {member!r}: {ckpt.folder} has no tensor {name}; the weights do not match "
                              f"the {config.model_type} layout of its config.json (re-save the model with "
                              f"save_pretrained)")
        if ckpt.shape(name) != shape:
            raise FamilyError(f"member {member!r}: {name} in {ckpt.files[name]} has shape {list(ckpt.shape(name))} "
                              f"but config.json implies {list(shape)}; the weights do not match the config (fix "
                              f"config.json or re-save the model)")


def _get(cfg: Any, key: str) -> Any:
    """A field of a config object, or of a raw config.json dict (``inspect_family``)."""
    return cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)


def _compat_value(cfg: Any, key: str) -> Any:
    """The value of ``key`` as it affects computation (a sliding window that is switched off is none)."""
    if key == "sliding_window" and _get(cfg, "use_sliding_window") is False:
        return None
    value = _get(cfg, key)
    if key == "rope_parameters" and isinstance(cfg, dict) and value is None and "rope_theta" in cfg:
        value = {**(cfg.get("rope_scaling") or {"rope_type": "default"}), "rope_theta": cfg["rope_theta"]}
    return dict(value) if isinstance(value, dict) else value


def check_compatible(configs: dict[str, Any], only_explicit: bool = False) -> None:
    """Every member must compute its layers as the base does: same architecture and the same value of
    every field in ``COMPAT_KEYS``. ``only_explicit`` (raw config.json dicts): compare only fields both
    files spell out, since the defaults live in transformers' config classes."""
    base = configs["base"]
    for m, cfg in configs.items():
        if _get(cfg, "model_type") != _get(base, "model_type"):
            raise FamilyError(f"member {m!r} is {_get(cfg, 'model_type')!r} but the base is "
                              f"{_get(base, 'model_type')!r}; a family must share one architecture")
        for key in COMPAT_KEYS:
            a, b = _compat_value(base, key), _compat_value(cfg, key)
            if only_explicit and (a is None or b is None):
                continue
            if a != b:
                raise FamilyError(f"member {m!r} has {key}={b} but the base has {key}={a}; "
                                  f"members must be finetunes of the same base (same {key})")


LAYER_PREFIX = "model.layers."
