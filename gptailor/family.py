"""Model families: one base and K finetunes of it, opened once and shared by every stitched model.

Members are never loaded whole. A member is its config plus its safetensors headers; a decoder layer's
tensors are read lazily from the memory-mapped files (``gptailor.checkpoint``) and converted to the
compute dtype, on the compute device, only when a plan uses that layer. Converted layers live in one
byte-bounded cache per family (``gptailor.cache``). Only the base's embeddings, final norm and LM head
stay resident. That is what lets a family of four 7B bfloat16 models be searched in float32 on a CPU,
or on one GPU, whatever the dtypes.

Loading checks, before any tensor is read, that every member is a finetune of the base: the same
value for every config field that changes a layer's computation (``COMPAT_KEYS``) and, from the
headers, every tensor the architecture needs present with the shape the config implies.
"""
from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from .cache import ByteCache, State, cache_budget, state_bytes
from .checkpoint import Checkpoint, CheckpointError, one_line

DEMO_DIR = Path(__file__).resolve().parent / "demo_family"  # built by `python -m gptailor.demo build`

# Decoder-only architectures sharing the Llama layout (model.layers[i].self_attn / mlp, norms).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# Config fields that change what a decoder layer (or the embeddings/head) computes: a member must match
# the base on every one. rope_parameters is transformers 5's home of rope_theta and rope scaling;
# rope_theta / rope_scaling are read too for configs that still carry them as attributes.
COMPAT_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
               "num_key_value_heads", "head_dim", "hidden_act", "vocab_size", "tie_word_embeddings",
               "rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling", "attention_bias", "mlp_bias",
               "use_sliding_window", "sliding_window", "layer_types")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


_MEMBER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class FamilyError(ValueError):
    """A family that cannot be loaded or used; the message names the member and the problem."""


@dataclass
class FamilySpec:
    """What a family is made of. Sources are hub ids or local folders (relative to the spec file)."""

    name: str
    base: str
    candidates: dict[str, str] = field(default_factory=dict)
    dtype: str = "auto"  # auto: bfloat16 when CUDA is used, else float32
    device: str = "auto"  # auto: cuda when available, else cpu
    suite: str | None = None  # default task suite (a suite.yaml), relative to the spec file
    trust_remote_code: bool = False
    root: str | None = None  # folder relative sources are resolved against

    @property
    def member_names(self) -> list[str]:
        return ["base", *self.candidates]

    def source(self, member: str) -> str:
        src = self.base if member == "base" else self.candidates[member]
        if self.root and not os.path.isabs(src):
            local = Path(self.root) / src
            if local.exists():
                return str(local)
        return src

    def suite_path(self) -> str | None:
        if self.suite is None:
            return None
        return str(Path(self.root) / self.suite) if self.root and not os.path.isabs(self.suite) else self.suite

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("root")
        return d

    @classmethod
    def from_dict(cls, d: Any, root: str | None = None) -> "FamilySpec":
        if not isinstance(d, dict):
            raise FamilyError("a family spec is a mapping with at least 'name' and 'base'")
        missing = [k for k in ("name", "base") if not d.get(k)]
        if missing:
            raise FamilyError(f"family spec is missing {', '.join(missing)}; give name, base and candidates")
        cands = d.get("candidates") or {}
        if isinstance(cands, list):  # a list of sources: name each by its folder name
            cands = {Path(str(c)).name: str(c) for c in cands}
        if not isinstance(cands, dict):
            raise FamilyError("family spec 'candidates' must map member names to hub ids or folders")
        if "base" in cands:
            raise FamilyError("a candidate cannot be called 'base'; that name is the base model's")
        for k in cands:  # names appear in plan text: 0:math 1:merge(math=.5,code=.5)
            if not _MEMBER_NAME.match(str(k)) or str(k) == "drop" or str(k).startswith("merge"):
                raise FamilyError(f"candidate name {k!r} cannot be used in plans; use letters, digits and _ "
                                  f"(starting with a letter), not 'drop' or 'merge...'")
        unknown = set(d) - {f for f in cls.__dataclass_fields__} 
        if unknown:
            raise FamilyError(f"family spec has unknown keys {sorted(unknown)}; known: name, base, candidates, "
                              f"dtype, device, suite, trust_remote_code")
        if str(d.get("dtype", "auto")) not in ("auto", *_DTYPES):
            raise FamilyError(f"dtype {d['dtype']!r} is not one of auto, float32, bfloat16, float16")
        check_device_name(str(d.get("device", "auto")))
        return cls(name=str(d["name"]), base=str(d["base"]), candidates={str(k): str(v) for k, v in cands.items()},
                   dtype=str(d.get("dtype", "auto")), device=str(d.get("device", "auto")),
                   suite=d.get("suite"), trust_remote_code=bool(d.get("trust_remote_code", False)),
                   root=d.get("root", root))

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> "FamilySpec":
        """``demo``, a spec file (YAML/JSON), or a folder holding ``family.yaml``."""
        s = str(name_or_path)
        if s == "demo":
            return cls.load(DEMO_DIR / "family.yaml")
        path = Path(s)
        if path.is_dir():
            path = path / "family.yaml"
        if not path.exists():
            raise FamilyError(f"no family {s!r}: give 'demo', a family spec file (.yaml/.json) or a folder with family.yaml")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise FamilyError(f"{path.name}: not UTF-8 text (byte {e.start}); save the family spec as UTF-8") from None
        try:
            if path.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as e:  # noqa: BLE001 - the parser's message is what the user needs
            from .parsing import parse_error

            raise FamilyError(f"cannot parse family spec {parse_error(e, path.name)}") from None
        return cls.from_dict(data, root=str(path.parent.resolve()))


def check_device_name(device: str) -> None:
    """Refuse what torch cannot parse (``device: banana``) with the spelling it expects."""
    if device == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise FamilyError(f"device {device!r} is not a torch device; use auto, cpu, cuda, cuda:1, mps") from None


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked against this machine (FamilyError)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise FamilyError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise FamilyError(f"device {device!r} asked for, but this machine has "
                          f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA devices; "
                          f"use cpu or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise FamilyError("device 'mps' asked for, but this machine has no MPS; use cpu or auto")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise FamilyError(f"dtype {dtype!r} is not one of auto, float32, bfloat16, float16")
    return _DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


LAYER_PREFIX = "model.layers."


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


def one_layer_config(config, position: int = 0):
    """The config of a one-layer model whose layer is ``position``'s kind (for layer_types)."""
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = 1
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [config.layer_types[position]]
    if getattr(cfg, "max_window_layers", None) is not None:
        cfg.max_window_layers = int(position < config.max_window_layers)
    return cfg


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


def _weights_folder(spec: FamilySpec, member: str) -> Path:
    """The local folder holding ``member``'s safetensors: the folder itself, or the hub cache's snapshot
    (downloading only the safetensors files when online)."""
    src = spec.source(member)
    if Path(src).is_dir():
        return Path(src)
    from huggingface_hub import hf_hub_download

    try:
        try:
            index = Path(hf_hub_download(src, "model.safetensors.index.json"))
        except Exception as e:  # noqa: BLE001 - hub errors differ offline and online
            if type(e).__name__ not in ("EntryNotFoundError", "RemoteEntryNotFoundError", "LocalEntryNotFoundError"):
                raise
            return Path(hf_hub_download(src, "model.safetensors")).parent
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            hf_hub_download(src, shard)
        return index.parent
    except Exception as e:  # noqa: BLE001
        raise FamilyError(f"member {member!r} ({src}): cannot find safetensors weights ({one_line(e)}); a hub id "
                          f"needs a local cache when offline") from None


def open_checkpoint(spec: FamilySpec, member: str) -> Checkpoint:
    try:
        return Checkpoint(_weights_folder(spec, member))
    except CheckpointError as e:
        raise FamilyError(f"member {member!r}: {e}") from None
    except OSError as e:
        raise FamilyError(f"member {member!r} ({spec.source(member)}): cannot read weights: {one_line(e)}") from None


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


def _generation_config(spec: FamilySpec, config):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(spec.source("base"))
    except (OSError, ValueError):
        return GenerationConfig.from_model_config(config)


def _load_config(auto_config, spec: FamilySpec, member: str):
    src = spec.source(member)
    if (os.path.isabs(src) or src.startswith(".")) and not Path(src).exists():
        raise FamilyError(f"member {member!r}: folder {src} does not exist; fix the path in the family spec")
    try:
        cfg = auto_config.from_pretrained(src, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise FamilyError(f"member {member!r}: cannot load config from {src!r} (a hub id needs a local cache "
                          f"when offline, a folder needs config.json): {one_line(e)}") from None
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        raise FamilyError(f"member {member!r}: architecture {cfg.model_type!r} is not supported yet; "
                          f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (Llama-layout decoders)")
    return cfg


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


def _config_json(spec: FamilySpec, member: str) -> dict[str, Any]:
    """A member's config.json as a dict: no transformers import (about 2 s on a small CPU)."""
    src = spec.source(member)
    path = Path(src) / "config.json"
    if not Path(src).is_dir():
        if os.path.isabs(src) or src.startswith("."):
            raise FamilyError(f"member {member!r}: folder {src} does not exist; fix the path in the family spec")
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(src, "config.json"))
        except Exception as e:  # noqa: BLE001 - hub errors differ offline and online
            raise FamilyError(f"member {member!r}: cannot load config from {src!r} (a hub id needs a local cache "
                              f"when offline): {one_line(e)}") from None
    try:
        cfg = json.loads(path.read_text())
        assert isinstance(cfg, dict)
    except (OSError, ValueError, AssertionError) as e:
        raise FamilyError(f"member {member!r}: {path} is not a readable config.json ({one_line(e)})") from None
    if cfg.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise FamilyError(f"member {member!r}: architecture {cfg.get('model_type')!r} is not supported yet; "
                          f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (Llama-layout decoders)")
    return cfg


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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
                              f"this app does not download models; the server's operator must download it first, "
                              f"or point the spec at a local folder")
    info = inspect_family(spec)
    suite = spec.suite_path()
    if suite is not None and not Path(suite).exists():
        raise FamilyError(f"the spec's suite {spec.suite!r} does not exist next to the spec; upload the task "
                          f"files as a suite instead, or remove 'suite:'")
    return info


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
