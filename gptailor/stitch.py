"""Build a ready ``*ForCausalLM`` from a family and a plan, in memory, in milliseconds.

Why not copy models: a search evaluates hundreds of plans, so a stitched model must cost almost
nothing to build. A ``pick`` reuses the member's tensors (same storage, no copy); a ``merge`` is
computed once and kept in a bounded LRU cache keyed by (position, members, weights, method).

What transformers needs (checked in DESIGN.md): each kept layer is its own module with
``self_attn.layer_idx`` = 0..n-1 in order, ``config.num_hidden_layers = n`` (and ``layer_types``
sliced), and every layer's config pointing at the new config. Otherwise ``generate()`` with a KV
cache is silently wrong. We build a fresh model skeleton on the meta device with the new config and
*assign* tensors into it, so the family's own modules are never touched.
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Hashable

import torch

from .family import Family
from .merge import merge_state
from .plan import Op, Plan, split_source


class LRU:
    """A small bounded least-recently-used cache."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.data: OrderedDict[Hashable, dict[str, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0
        self._lock = threading.Lock()  # a UI serves several requests at once from one stitcher

    def get(self, key: Hashable):
        with self._lock:
            value = self.data.get(key)
            if value is not None:
                self.data.move_to_end(key)
                self.hits += 1
                return value
            self.misses += 1
            return None

    def put(self, key: Hashable, value) -> None:
        with self._lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.maxsize:
                self.data.popitem(last=False)

    def __len__(self) -> int:
        return len(self.data)


def stitched_config(base_config, plan: Plan):
    """The base config with only the kept positions (``num_hidden_layers``, ``layer_types``)."""
    cfg = copy.deepcopy(base_config)
    kept = plan.kept_positions
    cfg.num_hidden_layers = len(kept)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [base_config.layer_types[i] for i in kept]
    if getattr(cfg, "max_window_layers", None) is not None:  # qwen2: sliding window from this index on
        cfg.max_window_layers = sum(1 for i in kept if i < base_config.max_window_layers)
    return cfg


class Stitcher:
    """Builds stitched models for one family; holds the merged-layer and device caches."""

    def __init__(self, family: Family, cache_size: int = 64, device: str | torch.device | None = None) -> None:
        self.family = family
        self.device = torch.device(device) if device is not None else family.device
        self.merged = LRU(cache_size)  # merged layers, on the compute device
        self.moved = LRU(cache_size)  # picked layers copied to the compute device (not used on CPU)
        self._shared: dict[str, dict[str, torch.Tensor]] = {}

    # -- layer tensors --------------------------------------------------------------
    def _on_device(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, self.family.dtype) for k, v in state.items()}

    def _needs_move(self) -> bool:
        base_param = next(self.family.base.parameters())
        return base_param.device != self.device or base_param.dtype != self.family.dtype

    def layer_tensors(self, position: int, op: Op) -> dict[str, torch.Tensor]:
        """The tensors position ``position`` gets under ``op`` (shared for pick, cached for merge).
        Cached tensors are made outside inference mode, so a model built later outside it can use them."""
        with torch.inference_mode(False), torch.no_grad():
            return self._layer_tensors(position, op)

    def _layer_tensors(self, position: int, op: Op) -> dict[str, torch.Tensor]:
        fam = self.family
        if op.kind == "pick":
            member = op.member or "base"
            if not self._needs_move():
                return fam.layer_state(member, position)
            key = (member, position)
            state = self.moved.get(key)
            if state is None:
                state = self._on_device(fam.layer_state(member, position))
                self.moved.put(key, state)
            return state
        key = (position, op.weights, op.method, op.density)
        state = self.merged.get(key)
        if state is None:
            sources = [split_source(m) for m in op.members]
            states = [fam.layer_state(m, position if p is None else p) for m, p in sources]
            base = fam.layer_state("base", position) if op.method in ("task_arithmetic", "ties") else None
            weights = [w for _, w in op.weights]
            merged = merge_state(op.method, states, weights, base, op.density)
            state = self._on_device(merged)
            self.merged.put(key, state)
        return state

    def shared_tensors(self, member: str = "base") -> dict[str, torch.Tensor]:
        """Everything outside the decoder layers (embeddings, final norm, LM head), from the base --
        or from ``member``, to rebuild that member's own model exactly."""
        if member not in self._shared:
            sd = {k: v for k, v in self.family.models[member].state_dict().items() if ".layers." not in k}
            with torch.inference_mode(False), torch.no_grad():
                self._shared[member] = self._on_device(sd) if self._needs_move() else sd
        return self._shared[member]

    # -- building -------------------------------------------------------------------
    def build(self, plan: Plan, shared_from: str = "base") -> torch.nn.Module:
        """A ready ``*ForCausalLM`` (eval mode) for ``plan``. Embeddings, final norm and LM head come
        from the base (the paper's stitched model); ``shared_from`` names another member for them."""
        from transformers import AutoModelForCausalLM

        fam = self.family
        plan.validate(fam.member_names, fam.n_layers)
        cfg = stitched_config(fam.config, plan)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=fam.dtype)
        state = dict(self.shared_tensors(shared_from))
        for j, i in enumerate(plan.kept_positions):
            for k, v in self.layer_tensors(i, plan.ops[i]).items():
                state[f"model.layers.{j}.{k}"] = v
        model.load_state_dict(state, strict=True, assign=True)
        # Non-persistent buffers (rotary inv_freq) are not in state dicts: take the base's module.
        model.model.rotary_emb = self._rotary()
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.generation_config = copy.deepcopy(fam.base.generation_config)
        model.requires_grad_(False)
        return model.eval()

    def _rotary(self) -> torch.nn.Module:
        rot = self.family.base.model.rotary_emb
        if not self._needs_move():
            return rot
        if not hasattr(self, "_rot"):
            self._rot = copy.deepcopy(rot).to(self.device)
        return self._rot


def param_count(model: torch.nn.Module) -> int:
    """Parameters of a model, counting tied tensors once."""
    return sum(p.numel() for p in {p.data_ptr(): p for p in model.parameters()}.values())
