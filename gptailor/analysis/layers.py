"""Layer statistics of a family on a calibration set: why a plan works, before searching for one.

- block influence (ShortGPT): 1 - mean cos(input, output) per position per member;
- angular distance (Gromov et al.): arccos(cos(h_l, h_{l+n})) / pi at the last token, every (l, n);
- linear CKA: position x position within a member, and member x member at each position;
- weight drift: ||W_m - W_base|| / ||W_base|| per position per member.

Everything is plain lists in a dataclass so it can be cached as JSON and plotted without torch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from gptailor.analysis.states import Calibration, angular_distance, block_influence, layer_states
from gptailor.family.family import Family
from gptailor.common.paths import inside, safe_name
from gptailor.plan import Plan
from gptailor.stitch import Stitcher


@dataclass
class LayerAnalysis:
    family: str
    members: list[str]
    n_layers: int
    n_texts: int
    block_influence: dict[str, list[float]]  # member -> per position
    angular: dict[str, list[list[float | None]]]  # member -> [n - 1][start]: d(l, l + n), None past the end
    cka_layers: dict[str, list[list[float]]]  # member -> L x L
    cka_members: list[list[list[float]]]  # position -> M x M
    drift: dict[str, list[float]]  # member -> per position

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LayerAnalysis":
        return cls(**d)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two (samples, features) matrices (Kornblith et al. 2019)."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    num = (y.T @ x).norm() ** 2
    den = (x.T @ x).norm() * (y.T @ y).norm()
    return float(num / den) if den > 0 else 0.0


def weight_drift(family: Family, member: str) -> list[float]:
    out = []
    for i in range(family.n_layers):
        base = family.layer_state("base", i)
        mine = family.layer_state(member, i)
        num = sum(float((mine[k].float() - base[k].float()).pow(2).sum()) for k in base)
        den = sum(float(base[k].float().pow(2).sum()) for k in base)
        out.append((num / den) ** 0.5 if den > 0 else 0.0)
    return out


def analyze(family: Family, texts: Calibration, stitcher: Stitcher | None = None,
            progress: Callable[[float, str], None] | None = None, max_tokens: int = 4096) -> LayerAnalysis:
    """Compute every statistic for every member on ``texts`` (the same tokens for all members)."""
    stitcher = stitcher or Stitcher(family)
    members = family.member_names
    L = family.n_layers
    bi, ang, cka_l, drift, outs = {}, {}, {}, {}, {}
    for k, m in enumerate(members):
        if progress:
            progress(k / (len(members) + 1), f"hidden states of {m}")
        model = stitcher.build(Plan.identity(L, m, family.name))
        states = layer_states(model, family.tokenizer, texts, keep_tokens=max_tokens)
        bi[m] = block_influence(states)
        ang[m] = [angular_distance(states, n) + [None] * (n - 1) for n in range(1, L)]
        o = states.outputs
        outs[m] = o
        cka_l[m] = [[linear_cka(o[a], o[b]) for b in range(L)] for a in range(L)]
        drift[m] = weight_drift(family, m)
    if progress:
        progress(len(members) / (len(members) + 1), "member x member CKA")
    cka_m = [[[linear_cka(outs[a][i], outs[b][i]) for b in members] for a in members] for i in range(L)]
    return LayerAnalysis(family.name, members, L, len(texts), bi, ang, cka_l, cka_m, drift)


def cache_key(family: Family, texts: Calibration) -> str:
    """The family's spec and the calibration set (texts or the token ids scoring feeds), hashed."""
    h = hashlib.sha256()
    h.update(json.dumps(family.spec.to_dict(), sort_keys=True).encode())
    for t in texts:
        h.update(t.encode() if isinstance(t, str) else json.dumps(list(t)).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def cached_analysis(family: Family, texts: Calibration, cache_dir: str | Path, **kw) -> LayerAnalysis:
    """``analyze`` once per family + calibration set; later calls read the JSON file."""
    name = safe_name("family", family.name)  # the family's name becomes part of a file name
    path = inside(cache_dir, Path(cache_dir) / f"analysis-{name}-{cache_key(family, texts)}.json", "analysis cache")
    if path.exists():
        return LayerAnalysis.from_dict(json.loads(path.read_text()))
    result = analyze(family, texts, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict()))
    tmp.replace(path)
    return result
