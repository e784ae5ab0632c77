"""What a family is, read from configs and safetensors headers only (no member is loaded), and the server-side spec check."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from gptailor.weights.cache import cache_budget
from gptailor.weights.checkpoint import Checkpoint
from gptailor.family.compat import LAYER_PREFIX, _get, check_compatible
from gptailor.family.device import dtype_name, resolve_device, resolve_dtype
from gptailor.family.hub import _config_json, open_checkpoint
from gptailor.family.spec import FamilyError, FamilySpec, _HUB_ID


def describe(spec: FamilySpec, configs: dict[str, Any], checkpoints: dict[str, Checkpoint], device: torch.device,
             dtype: torch.dtype, cache_bytes: int, cache_source: str) -> dict[str, Any]:
    """The family summary ``info`` prints, from configs and safetensors headers only."""
    c = configs["base"]
    base = checkpoints["base"]
    layer0 = [n for n in base.headers if n.startswith(f"{LAYER_PREFIX}0.")]
    per_layer = base.numel(layer0)
    tied = bool(_get(c, "tie_word_embeddings"))
    shared = [n for n in base.headers if not n.startswith(LAYER_PREFIX) and not (tied and n == "lm_head.weight")]
    L = int(_get(c, "num_hidden_layers"))
    return {"family": spec.name, "model_type": _get(c, "model_type"), "layers": L,
            "hidden_size": _get(c, "hidden_size"), "params": base.numel(shared) + L * per_layer,
            "params_per_layer": per_layer, "dtype": dtype_name(dtype), "device": str(device),
            "checkpoint_dtypes": {m: dtype_name(ck.main_dtype()) for m, ck in checkpoints.items()},
            "cache_mb": round(cache_bytes / 2 ** 20), "cache_budget": cache_source,
            "members": {m: spec.source(m) for m in spec.member_names}}


def inspect_family(spec: FamilySpec | str | os.PathLike, device: str | None = None, dtype: str | None = None,
                   cache_mb: float | None = None) -> dict[str, Any]:
    """``Family.info()`` without opening the family: config.json files and safetensors headers only (no
    tokenizer, no tensor read, no transformers import), so it answers in about a second whatever the
    size. Compatibility is checked on the fields the config files spell out; opening the family checks
    them all."""
    if not isinstance(spec, FamilySpec):
        spec = FamilySpec.load(spec)
    dev = resolve_device(device or spec.device)
    dt = resolve_dtype(dtype or spec.dtype, dev)
    configs = {m: _config_json(spec, m) for m in spec.member_names}
    check_compatible(configs, only_explicit=True)
    checkpoints = {m: open_checkpoint(spec, m) for m in spec.member_names}
    try:
        budget, source = cache_budget(dev, cache_mb)
    except ValueError as e:
        raise FamilyError(str(e)) from None
    return describe(spec, configs, checkpoints, dev, dt, budget, source)


def verify_spec(spec: FamilySpec) -> dict[str, Any]:
    """Check that every member can be opened *here*, before a spec is stored: a folder source exists, a hub
    id is in the local Hugging Face cache (nothing is downloaded; the app runs offline), the configs are
    compatible and the weights' headers complete (``inspect_family``), and a named suite exists.
    Returns the family's summary; FamilyError naming the first member that fails."""
    from huggingface_hub import try_to_load_from_cache

    for m in spec.member_names:
        src = spec.source(m)
        if Path(src).is_dir():
            continue
        raw = spec.base if m == "base" else spec.candidates[m]
        if os.path.isabs(src) or src.startswith(".") or not _HUB_ID.match(src) or src.count("/") > 1:
            where = f" (relative to {spec.root})" if spec.root and not os.path.isabs(raw) else ""
            raise FamilyError(f"member {m!r}: folder {raw!r}{where} does not exist")
        if not isinstance(try_to_load_from_cache(src, "config.json"), str):
            raise FamilyError(f"member {m!r}: hub id {src!r} is not in this machine's Hugging Face cache and "
                              f"nothing is downloaded here; download it into the cache first "
                              f"(huggingface-cli download {src}), or point the spec at a local folder")
    info = inspect_family(spec)
    suite = spec.suite_path()
    if suite is not None and not Path(suite).exists():
        raise FamilyError(f"the spec's suite {spec.suite!r} does not exist next to the spec; give the task "
                          f"files as a suite of their own, or remove 'suite:'")
    return info
