"""TIES (mergekit ``ties``): task vectors trimmed to the top ``density`` fraction by magnitude, a sign
elected per entry from the weighted sum, then the weighted mean of the agreeing entries added to base."""
from __future__ import annotations

import torch

from gptailor.merge.registry import MergeMethod, register

Tensor = torch.Tensor
DENSITY = 0.5  # our default (mergekit's is 1.0, so the export always writes it)


def _trim(delta: Tensor, density: float) -> Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude, zero the rest: exactly
    ``max(1, int(density * n))`` entries, mergekit's count (rounded, 0.4 of 1024 entries would keep one more)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    flat = delta.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k).indices] = True
    return (flat * keep).view_as(delta)


def elect(base: Tensor, deltas: Tensor, weights: list[float], normalise: bool = True) -> Tensor:
    """TIES' sign election over weighted task vectors ``deltas`` (members stacked on dim 0, float32):
    base + the sum of the entries agreeing with the sign of the total, divided by the agreeing members'
    weights when ``normalise``."""
    sign = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0)  # a zero sum counts as positive (mergekit)
    agree = (torch.sign(deltas) == sign) & (deltas != 0)
    num = (deltas * agree).sum(dim=0)
    if not normalise:
        return base + num
    w = torch.tensor(weights, dtype=torch.float32, device=base.device).view(-1, *([1] * base.dim()))
    den = (w * agree).sum(dim=0)
    return base + torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


def ties(base: Tensor, tensors: list[Tensor], weights: list[float], density: float = DENSITY) -> Tensor:
    b = base.float()
    deltas = torch.stack([_trim(t.float() - b, density) * w for t, w in zip(tensors, weights)])
    return elect(b, deltas, weights).to(base.dtype)


register(MergeMethod(
    name="ties", merge=lambda tensors, weights, base, density: ties(base, tensors, weights, density),
    summary="trimmed task vectors, sign election, mean of the agreeing ones", needs_base=True,
    normalises=True, defaults={"density": DENSITY},
    mergekit="ties", mergekit_parameters={"normalize": True}, searchable=True))
