"""A family spec (base, candidates, device, dtype, suite): the small YAML/JSON file that names a family."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


DEMO_DIR = Path(__file__).resolve().parents[1] / "builtin" / "demo_family"  # built by `python -m gptailor.builtin build`


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
            from gptailor.common.parsing import parse_error

            raise FamilyError(f"cannot parse family spec {parse_error(e, path.name)}") from None
        return cls.from_dict(data, root=str(path.parent.resolve()))


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def check_device_name(device: str) -> None:
    """Refuse what torch cannot parse (``device: banana``) with the spelling it expects."""
    if device == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise FamilyError(f"device {device!r} is not a torch device; use auto, cpu, cuda, cuda:1, mps") from None
