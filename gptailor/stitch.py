"""Build a ready ``*ForCausalLM`` from a family and a plan, in memory, in milliseconds.

Why not copy models: a search evaluates hundreds of plans, so a stitched model must cost almost
nothing to build. A ``pick`` reuses the family's tensors for that layer (the memory-mapped file
itself when no conversion is needed, else the converted copy in the family's cache); a ``merge`` is
computed once, on the compute device, and kept in the same byte-bounded cache, keyed by (position,
members, weights, method, density, device, dtype).

What transformers needs (checked in docs/architecture.md): each kept layer is its own module with
``self_attn.layer_idx`` = 0..n-1 in order, ``config.num_hidden_layers = n`` (and ``layer_types``
sliced), and every layer's config pointing at the new config. Otherwise ``generate()`` with a KV
cache is silently wrong. We build a fresh model skeleton on the meta device with the new config and
*assign* tensors into it, so the family's own modules are never touched.
"""
from __future__ import annotations

import copy

import torch

from gptailor.weights.cache import ByteCache, cache_budget
from gptailor.family.compat import kept_layers_config
from gptailor.family.family import Family
from gptailor.family.spec import FamilyError
from gptailor.family.device import resolve_dtype
from gptailor.merge import get_method, merge_state
from gptailor.plan import Op, Plan, split_source


def stitched_config(base_config, plan: Plan):
    """The base config with only the plan's kept positions."""
    return kept_layers_config(base_config, plan.kept_positions)


class Stitcher:
    """Builds stitched models for one family on one device in one dtype (default: the family's).

    Converted and merged layers go to the family's byte-bounded cache, shared by every stitcher of the
    family, unless ``cache_mb`` gives this stitcher a cache of its own."""

    def __init__(self, family: Family, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, cache_mb: float | None = None) -> None:
        self.family = family
        self.device = torch.device(device) if device is not None else family.device
        self.dtype = family.dtype if dtype is None else resolve_dtype(dtype, self.device)
        if cache_mb is None:
            self.cache = family.cache
        else:
            try:
                self.cache = ByteCache(cache_budget(self.device, cache_mb)[0])
            except ValueError as e:
                raise FamilyError(str(e)) from None
        self._rot: torch.nn.Module | None = None

    # -- layer tensors --------------------------------------------------------------
    def layer_tensors(self, position: int, op: Op) -> dict[str, torch.Tensor]:
        """The tensors position ``position`` gets under ``op`` (shared for pick, cached for merge).
        Cached tensors are made outside inference mode, so a model built later outside it can use them."""
        with torch.inference_mode(False), torch.no_grad():
            return self._layer_tensors(position, op)

    def _state(self, member: str, position: int) -> dict[str, torch.Tensor]:
        return self.family.layer_state(member, position, self.device, self.dtype, self.cache)

    def _layer_tensors(self, position: int, op: Op) -> dict[str, torch.Tensor]:
        if op.kind == "pick":
            return self._state(op.member or "base", position)
        key = ("merge", position, op.weights, op.method, op.density, str(self.device), self.dtype)
        state = self.cache.get(key)
        if state is None:
            sources = [split_source(m) for m in op.members]
            states = [self._state(m, position if p is None else p) for m, p in sources]
            base = self._state("base", position) if get_method(op.method).needs_base else None
            weights = [w for _, w in op.weights]
            state = merge_state(op.method, states, weights, base, op.density, seed=position)
            self.cache.put(key, state)
            # the merge is a cached copy now: its mapped sources need not stay resident
            self.family.release_mapped(only=[(m, position if p is None else p) for m, p in sources]
                                       + ([("base", position)] if base is not None else []))
        return state

    def shared_tensors(self, member: str = "base") -> dict[str, torch.Tensor]:
        """Everything outside the decoder layers (embeddings, final norm, LM head), from the base --
        or from ``member``, to rebuild that member's own model exactly."""
        return self.family.shared_state(member, self.device, self.dtype, self.cache)

    # -- building -------------------------------------------------------------------
    def build(self, plan: Plan, shared_from: str = "base") -> torch.nn.Module:
        """A ready ``*ForCausalLM`` (eval mode) for ``plan``. Embeddings, final norm and LM head come
        from the base (the paper's stitched model); ``shared_from`` names another member for them."""
        from transformers import AutoModelForCausalLM

        fam = self.family
        plan.validate(fam.member_names, fam.n_layers)
        cfg = stitched_config(fam.config, plan)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=self.dtype)
        with torch.inference_mode(False), torch.no_grad():
            state = dict(self.shared_tensors(shared_from))
        for j, i in enumerate(plan.kept_positions):
            for k, v in self.layer_tensors(i, plan.ops[i]).items():
                state[f"model.layers.{j}.{k}"] = v
        model.load_state_dict(state, strict=True, assign=True)
        # only the layers this model uses as mapped stay resident (merges and conversions are cached copies)
        fam.release_mapped(keep=[(plan.ops[i].member or "base", i) for i in plan.kept_positions
                                 if plan.ops[i].kind == "pick"])
        # Non-persistent buffers (rotary inv_freq) are not in state dicts: computed from the config.
        model.model.rotary_emb = self._rotary(type(model.model.rotary_emb))
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.generation_config = copy.deepcopy(fam.generation_config)
        model.requires_grad_(False)
        return model.eval()

    def _rotary(self, cls: type) -> torch.nn.Module:
        """The rotary embedding of the base config on this device (one per stitcher, shared by models)."""
        if self._rot is None:
            with torch.inference_mode(False):
                self._rot = cls(config=self.family.config).to(self.device)
        return self._rot


def param_count(model: torch.nn.Module) -> int:
    """Parameters of a model, counting tied tensors once."""
    return sum(p.numel() for p in {p.data_ptr(): p for p in model.parameters()}.values())
