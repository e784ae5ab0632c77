"""Model families: one base and K finetunes of it, opened once and shared by every stitched model.

Members are never loaded whole. A member is its config plus its safetensors headers; a decoder layer's
tensors are read lazily from the memory-mapped files (``gptailor.weights.checkpoint``) and converted to the
compute dtype, on the compute device, only when a plan uses that layer. Converted layers live in one
byte-bounded cache per family (``gptailor.weights.cache``). Only the base's embeddings, final norm and LM head
stay resident. That is what lets a family of four 7B bfloat16 models be searched in float32 on a CPU,
or on one GPU, whatever the dtypes.

Loading checks, before any tensor is read, that every member is a finetune of the base: the same
value for every config field that changes a layer's computation (``COMPAT_KEYS``) and, from the
headers, every tensor the architecture needs present with the shape the config implies.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import torch

from gptailor.weights.cache import ByteCache, State, cache_budget, state_bytes
from gptailor.weights.checkpoint import Checkpoint, one_line
from gptailor.family.compat import LAYER_PREFIX, check_compatible, check_weights, expected_shapes, one_layer_config
from gptailor.family.device import resolve_device, resolve_dtype
from gptailor.family.hub import _generation_config, _load_config, open_checkpoint
from gptailor.family.inspect import describe
from gptailor.family.spec import FamilyError, FamilySpec


class Family:
    """An opened family: members' configs and lazily read weights, the base's tokenizer, checks done.

    ``layer_state(member, i)`` gives one decoder layer's tensors in the compute dtype on the compute
    device; ``shared_state(member)`` the embeddings, final norm and LM head. Both go through ``cache``
    (bounded in bytes) except where no conversion is needed: a CPU family whose checkpoint dtype is the
    compute dtype hands out the memory-mapped tensors themselves (zero copy, nothing cached).
    """

    def __init__(self, spec: FamilySpec, configs: dict[str, Any], checkpoints: dict[str, Checkpoint],
                 tokenizer: Any, device: torch.device, dtype: torch.dtype, layer_shapes: dict[str, tuple],
                 shared_shapes: dict[str, tuple], cache_mb: float | None = None, generation_config: Any = None) -> None:
        self.spec = spec
        self.configs = configs
        self.checkpoints = checkpoints
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.layer_shapes = layer_shapes  # layer-relative tensor name -> shape (same at every position)
        self.shared_shapes = shared_shapes  # non-layer tensor name -> shape (lm_head included when tied)
        budget, self.cache_source = cache_budget(device, cache_mb)
        self.cache = ByteCache(budget)
        self.generation_config = generation_config
        self._resident: dict[tuple, State] = {}  # the base's shared tensors per (device, dtype)
        self._resident_bytes = 0  # of those, the ones not memory-mapped
        self._layer_equal: dict[tuple[str, int], bool] = {}
        self._io_equal: dict[tuple[str, str], bool] = {}
        self._raw: dict[tuple[str, int], State] = {}  # memory-mapped layer views, read once

    # -- loading --------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: FamilySpec | str | os.PathLike, device: str | None = None,
                  dtype: str | None = None, cache_mb: float | None = None) -> "Family":
        """Open a family: configs and headers of every member are checked; no layer is read yet."""
        from transformers import AutoConfig, AutoTokenizer

        if not isinstance(spec, FamilySpec):
            spec = FamilySpec.load(spec)
        dev = resolve_device(device or spec.device)
        dt = resolve_dtype(dtype or spec.dtype, dev)
        configs = {m: _load_config(AutoConfig, spec, m) for m in spec.member_names}
        check_compatible(configs)
        layer_shapes, shared_shapes = expected_shapes(configs["base"])
        checkpoints = {m: open_checkpoint(spec, m) for m in spec.member_names}
        for m, ckpt in checkpoints.items():
            check_weights(m, ckpt, configs["base"], layer_shapes, shared_shapes)
        try:
            tok = AutoTokenizer.from_pretrained(spec.source("base"), trust_remote_code=spec.trust_remote_code)
        except (OSError, ValueError) as e:
            raise FamilyError(f"base ({spec.source('base')}): cannot load tokenizer: {one_line(e)}") from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        try:
            fam = cls(spec, configs, checkpoints, tok, dev, dt, layer_shapes, shared_shapes, cache_mb,
                      _generation_config(spec, configs["base"]))
        except ValueError as e:  # a bad cache_mb / $GPTAILOR_CACHE_MB
            raise FamilyError(str(e)) from None
        return fam

    # -- views ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def member_names(self) -> list[str]:
        return self.spec.member_names

    @property
    def config(self):
        return self.configs["base"]

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def checkpoint_dtype(self) -> torch.dtype:
        """The dtype the base's decoder layers are stored in (what an export writes by default)."""
        return self.checkpoints["base"].main_dtype(self._layer_names(0))

    def _check(self, member: str, position: int | None = None) -> None:
        if member not in self.checkpoints:
            raise FamilyError(f"unknown member {member!r}; the family has {', '.join(self.member_names)}")
        if position is not None and not 0 <= position < self.n_layers:
            raise FamilyError(f"layer {position} does not exist; the family has layers 0..{self.n_layers - 1}")

    def _layer_names(self, position: int) -> list[str]:
        return [f"{LAYER_PREFIX}{position}.{k}" for k in self.layer_shapes]

    def raw_layer(self, member: str, position: int) -> State:
        """One decoder layer as stored: checkpoint dtype, CPU, memory-mapped (no copy, no RAM of its own:
        the views are kept, the pages belong to the OS page cache)."""
        self._check(member, position)
        key = (member, position)
        state = self._raw.get(key)
        if state is None:
            ckpt = self.checkpoints[member]
            state = self._raw[key] = {k: ckpt.get(f"{LAYER_PREFIX}{position}.{k}") for k in self.layer_shapes}
        return state

    def _stored_as(self, member: str, position: int, dev: torch.device, dt: torch.dtype) -> bool:
        """Whether the layer is stored on ``dev`` in ``dt`` (then it is used as mapped), from the headers."""
        ckpt = self.checkpoints[member]
        return dev.type == "cpu" and all(ckpt.dtype(n) == dt for n in self._layer_names(position))

    def raw_shared(self, member: str = "base") -> State:
        """Embeddings, final norm and LM head as stored (the LM head is the embedding when tied)."""
        self._check(member)
        ckpt = self.checkpoints[member]
        tied = bool(getattr(self.config, "tie_word_embeddings", False))
        out = {k: ckpt.get(k) for k in self.shared_shapes if not (tied and k == "lm_head.weight")}
        if tied and "lm_head.weight" in self.shared_shapes:
            out["lm_head.weight"] = out["model.embed_tokens.weight"]
        return out

    def _target(self, device: str | torch.device | None, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
        dev = self.device if device is None else torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return dev, self.dtype if dtype is None else dtype

    def _converted(self, key: tuple, raw: State, dev: torch.device, dt: torch.dtype,
                   cache: ByteCache | None) -> State:
        """``raw`` itself when it is already on ``dev`` in ``dt``; else a converted copy, cached."""
        if _matches(raw, dev, dt):
            return raw
        return (self.cache if cache is None else cache).get_or_make(key, lambda: _convert(raw, dev, dt))

    def layer_state(self, member: str, position: int, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None, cache: ByteCache | None = None) -> State:
        """One decoder layer's tensors (keys relative to the layer), in ``dtype`` on ``device``
        (default: the family's). Read and converted on first use; never write into them."""
        dev, dt = self._target(device, dtype)
        if self._stored_as(member, position, dev, dt):
            return self.raw_layer(member, position)
        key = ("layer", member, position, str(dev), dt)

        def make() -> State:
            out = _convert(self.raw_layer(member, position), dev, dt)
            self.release_mapped(keep=(), only=[(member, position)])  # the copy is made: the pages can go
            return out
        return (self.cache if cache is None else cache).get_or_make(key, make)

    def release_mapped(self, keep: Iterable[tuple[str, int]] = (),
                       only: Iterable[tuple[str, int]] | None = None) -> None:
        """Hand back the resident pages of memory-mapped layers read so far, except ``keep`` ((member,
        position) pairs a live model uses as mapped). Bounds the process's resident set to the layers in
        use: without it every layer a search ever touched would stay resident. Views stay valid."""
        keep = set(keep)
        for member, position in list(self._raw) if only is None else only:
            if (member, position) not in keep:
                self.checkpoints[member].release(self._layer_names(position))

    def shared_state(self, member: str = "base", device: str | torch.device | None = None,
                     dtype: torch.dtype | None = None, cache: ByteCache | None = None) -> State:
        """Embeddings, final norm and LM head of ``member``. The base's, on the family's device and in
        its dtype, stay resident (every stitched model uses them); the rest go through the cache."""
        dev, dt = self._target(device, dtype)
        key = ("shared", member, str(dev), dt)
        if member == "base" and (dev, dt) == self._target(None, None):
            if key not in self._resident:
                raw = self.raw_shared(member)
                mapped = _matches(raw, dev, dt)
                self._resident[key] = raw if mapped else _convert(raw, dev, dt)
                self._resident_bytes += 0 if mapped else state_bytes(self._resident[key])
            return self._resident[key]
        return self._converted(key, self.raw_shared(member), dev, dt, cache)

    def layer_module(self, member: str, position: int) -> torch.nn.Module:
        """A standalone decoder-layer module holding ``member``'s layer ``position`` (for references
        and analysis; the stitcher does not need it)."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(one_layer_config(self.config, position), dtype=self.dtype)
        layer = model.model.layers[0]
        layer.load_state_dict(self.layer_state(member, position), strict=True, assign=True)
        layer.self_attn.layer_idx = position
        return layer.requires_grad_(False).eval()

    def layers(self, member: str) -> list[torch.nn.Module]:
        """Every decoder layer of ``member`` as modules. Converts them all: for small families and
        tests; a search should go through ``Stitcher``."""
        return [self.layer_module(member, i) for i in range(self.n_layers)]

    def io_equals_base(self, member: str, part: str) -> bool:
        """Whether ``member``'s ``part`` ('embed', 'norm' or 'head') is bit-for-bit the base's
        (true for decoder-only finetunes that left them alone; decides mergekit export)."""
        self._check(member)
        if member == "base":
            return True
        key = (member, part)
        if key not in self._io_equal:
            name = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight", "head": "lm_head.weight"}[part]
            mine, base = self.raw_shared(member), self.raw_shared("base")
            self._io_equal[key] = mine[name].dtype == base[name].dtype and torch.equal(mine[name], base[name])
        return self._io_equal[key]

    def layer_equals_base(self, member: str, position: int) -> bool:
        """Whether ``member``'s layer at ``position`` is bit-for-bit the base's (a finetune that froze
        it, or a LoRA that did not adapt it). Compared on the mapped files, pages handed back after."""
        self._check(member, position)
        if member == "base":
            return True
        key = (member, position)
        if key not in self._layer_equal:
            mine, base = self.raw_layer(member, position), self.raw_layer("base", position)
            self._layer_equal[key] = all(mine[k].dtype == base[k].dtype and torch.equal(mine[k], base[k])
                                         for k in self.layer_shapes)
            self.release_mapped(only=[key, ("base", position)])
        return self._layer_equal[key]

    def shared_positions(self) -> list[int]:
        """Positions where every member's layer is the base's: there a pick or a merge (linear, task
        arithmetic, TIES: all reduce to the layer itself) is the base's layer, so only keep-or-drop
        matters. A search space that still offered members there would spend its trials on no-ops."""
        return [i for i in range(self.n_layers)
                if all(self.layer_equals_base(m, i) for m in self.member_names[1:])]

    def layer_params(self) -> int:
        return self.checkpoints["base"].numel(self._layer_names(0))

    def param_count(self, n_kept: int | None = None) -> int:
        """Parameters of a model that keeps ``n_kept`` layers (all by default), tied tensors once."""
        tied = bool(getattr(self.config, "tie_word_embeddings", False))
        shared = [k for k in self.shared_shapes if not (tied and k == "lm_head.weight")]
        n = self.n_layers if n_kept is None else n_kept
        return self.checkpoints["base"].numel(shared) + n * self.layer_params()

    def resident_bytes(self) -> int:
        """Bytes of tensors this family holds outside the memory-mapped files (resident base parts and
        the cache); memory-mapped reads are page cache the OS can drop."""
        return self._resident_bytes + self.cache.nbytes

    def info(self) -> dict[str, Any]:
        return describe(self.spec, self.configs, self.checkpoints, self.device, self.dtype,
                        self.cache.max_bytes, self.cache_source)


def _matches(state: State, dev: torch.device, dt: torch.dtype) -> bool:
    return all(v.device == dev and v.dtype == dt for v in state.values())


def _convert(raw: State, dev: torch.device, dt: torch.dtype) -> State:
    """``raw`` copied to ``dev`` in ``dt``, made outside inference mode (so models built outside it can
    use the result) and keeping tied tensors tied."""
    with torch.inference_mode(False), torch.no_grad():
        done: dict[int, torch.Tensor] = {}
        for v in raw.values():
            if id(v) not in done:
                done[id(v)] = v.to(dev, dt)
        return {k: done[id(v)] for k, v in raw.items()}
