"""Model families: one base and K finetunes of it, loaded once and shared by every stitched model.

Members stay on the CPU (safetensors are memory-mapped by ``from_pretrained``); only the layers a
plan uses are moved to the compute device by the stitcher. That is what lets a family of four 7B
models be searched on one GPU.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

DEMO_DIR = Path(__file__).resolve().parent / "demo_family"  # built by `python -m gptailor.demo build`

# Decoder-only architectures sharing the Llama layout (model.layers[i].self_attn / mlp, norms).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size")
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
            raise FamilyError(f"{path}: cannot parse family spec: {e}") from None
        return cls.from_dict(data, root=str(path.parent.resolve()))


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


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


class Family:
    """A loaded family: members' models on the CPU, the base's tokenizer, shape checks done."""

    def __init__(self, spec: FamilySpec, models: dict[str, torch.nn.Module], tokenizer: Any,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.spec = spec
        self.models = models
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype

    # -- loading --------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: FamilySpec | str | os.PathLike, device: str | None = None,
                  dtype: str | None = None) -> "Family":
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        if not isinstance(spec, FamilySpec):
            spec = FamilySpec.load(spec)
        dev = resolve_device(device or spec.device)
        dt = resolve_dtype(dtype or spec.dtype, dev)
        configs = {m: _load_config(AutoConfig, spec, m) for m in spec.member_names}
        check_compatible(configs)
        models = {}
        for m in spec.member_names:
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    spec.source(m), dtype=dt, trust_remote_code=spec.trust_remote_code, use_safetensors=True)
            except (OSError, ValueError) as e:
                raise FamilyError(f"member {m!r} ({spec.source(m)}): cannot load weights: {e}") from None
            models[m] = model.eval().requires_grad_(False)
        check_layer_shapes(models)
        try:
            tok = AutoTokenizer.from_pretrained(spec.source("base"), trust_remote_code=spec.trust_remote_code)
        except (OSError, ValueError) as e:
            raise FamilyError(f"base ({spec.source('base')}): cannot load tokenizer: {e}") from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return cls(spec, models, tok, dev, dt)

    # -- views ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def member_names(self) -> list[str]:
        return self.spec.member_names

    @property
    def base(self) -> torch.nn.Module:
        return self.models["base"]

    @property
    def config(self):
        return self.base.config

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    def layers(self, member: str) -> torch.nn.ModuleList:
        return self.models[member].model.layers

    def layer_state(self, member: str, position: int) -> dict[str, torch.Tensor]:
        """The tensors of one decoder layer, sharing storage with the member's model."""
        if member not in self.models:
            raise FamilyError(f"unknown member {member!r}; the family has {', '.join(self.member_names)}")
        return self.layers(member)[position].state_dict()

    def layer_params(self) -> int:
        return sum(p.numel() for p in self.layers("base")[0].parameters())

    def param_count(self, n_kept: int | None = None) -> int:
        """Parameters of a model that keeps ``n_kept`` layers (all by default)."""
        total = sum(p.numel() for p in {id(p): p for p in self.base.parameters()}.values())
        n = self.n_layers if n_kept is None else n_kept
        return total - (self.n_layers - n) * self.layer_params()

    def info(self) -> dict[str, Any]:
        c = self.config
        return {"family": self.name, "model_type": c.model_type, "layers": self.n_layers,
                "hidden_size": c.hidden_size, "params": self.param_count(), "params_per_layer": self.layer_params(),
                "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
                "members": {m: self.spec.source(m) for m in self.member_names}}


def _load_config(auto_config, spec: FamilySpec, member: str):
    src = spec.source(member)
    if (os.path.isabs(src) or src.startswith(".")) and not Path(src).exists():
        raise FamilyError(f"member {member!r}: folder {src} does not exist; fix the path in the family spec")
    try:
        cfg = auto_config.from_pretrained(src, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise FamilyError(f"member {member!r}: cannot load config from {src!r} (a hub id needs a local cache "
                          f"when offline, a folder needs config.json): {e}") from None
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        raise FamilyError(f"member {member!r}: architecture {cfg.model_type!r} is not supported yet; "
                          f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (Llama-layout decoders)")
    return cfg


def check_compatible(configs: dict[str, Any]) -> None:
    """Every member must have the base's architecture and layer shapes."""
    base = configs["base"]
    for m, cfg in configs.items():
        if cfg.model_type != base.model_type:
            raise FamilyError(f"member {m!r} is {cfg.model_type!r} but the base is {base.model_type!r}; "
                              f"a family must share one architecture")
        for key in _SHAPE_KEYS:
            a, b = getattr(base, key, None), getattr(cfg, key, None)
            if a != b:
                raise FamilyError(f"member {m!r} has {key}={b} but the base has {key}={a}; "
                                  f"members must be finetunes of the same base")


def check_layer_shapes(models: dict[str, torch.nn.Module]) -> None:
    ref = {k: tuple(v.shape) for k, v in models["base"].model.layers[0].state_dict().items()}
    for m, model in models.items():
        for i, layer in enumerate(model.model.layers):
            got = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
            if got != ref:
                diff = sorted(set(got.items()) ^ set(ref.items()))[:2]
                raise FamilyError(f"member {m!r} layer {i} differs from the base's layer shapes: {diff}")
