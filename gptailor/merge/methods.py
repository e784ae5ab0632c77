"""Merging one layer's tensors across members (linear, task arithmetic, TIES, SLERP).

The formulas follow mergekit's so that an exported mergekit YAML reproduces what we built:
- linear: sum_m w_m * theta_m / sum_m w_m;
- task_arithmetic: base + sum_m w_m * (theta_m - base)  (weights not normalised);
- ties: task vectors trimmed to the top ``density`` fraction by magnitude, a sign elected per
  entry from the weighted sum, then the weighted mean of the agreeing entries added to base;
- slerp: spherical interpolation between two members at t = w_b / (w_a + w_b).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def linear(tensors: list[Tensor], weights: list[float]) -> Tensor:
    total = sum(weights)
    out = torch.zeros_like(tensors[0], dtype=torch.float32)
    for t, w in zip(tensors, weights):
        out += t.float() * (w / total)
    return out.to(tensors[0].dtype)


def task_arithmetic(base: Tensor, tensors: list[Tensor], weights: list[float]) -> Tensor:
    b = base.float()
    out = b.clone()
    for t, w in zip(tensors, weights):
        out += w * (t.float() - b)
    return out.to(base.dtype)


def _trim(delta: Tensor, density: float) -> Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude, zero the rest."""
    if density >= 1:
        return delta
    k = int(round(density * delta.numel()))
    if k <= 0:
        return torch.zeros_like(delta)
    flat = delta.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k).indices] = True  # exactly k entries, as mergekit does
    return (flat * keep).view_as(delta)


def ties(base: Tensor, tensors: list[Tensor], weights: list[float], density: float = 0.5) -> Tensor:
    b = base.float()
    deltas = torch.stack([_trim(t.float() - b, density) * w for t, w in zip(tensors, weights)])
    sign = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0)  # a zero sum counts as positive (mergekit)
    agree = (torch.sign(deltas) == sign) & (deltas != 0)
    w = torch.tensor(weights, dtype=torch.float32, device=b.device).view(-1, *([1] * b.dim()))
    num = (deltas * agree).sum(dim=0)
    den = (w * agree).sum(dim=0)
    merged = torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))
    return (b + merged).to(base.dtype)


def slerp(a: Tensor, b: Tensor, t: float, eps: float = 1e-8) -> Tensor:
    """Spherical interpolation of the flattened tensors; linear where they are (anti)parallel."""
    va, vb = a.float().flatten(), b.float().flatten()
    na, nb = va.norm(), vb.norm()
    if na < eps or nb < eps:
        return torch.lerp(a.float(), b.float(), t).to(a.dtype)
    dot = torch.clamp((va / na) @ (vb / nb), -1.0, 1.0)
    if dot.abs() > 0.9995:
        return torch.lerp(a.float(), b.float(), t).to(a.dtype)
    omega = torch.arccos(dot)
    so = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) / so) * va + (torch.sin(t * omega) / so) * vb
    return out.view_as(a).to(a.dtype)


def merge_tensors(method: str, tensors: list[Tensor], weights: list[float], base: Tensor | None = None,
                  density: float | None = None) -> Tensor:
    """Merge one parameter across members; ``base`` is the base model's tensor at the same position."""
    if method == "linear":
        return linear(tensors, weights)
    if method == "slerp":
        if len(tensors) != 2:
            raise ValueError("slerp merges exactly two tensors")
        return slerp(tensors[0], tensors[1], weights[1] / (weights[0] + weights[1]))
    if base is None:
        raise ValueError(f"{method} needs the base tensor")
    if method == "task_arithmetic":
        return task_arithmetic(base, tensors, weights)
    if method == "ties":
        return ties(base, tensors, weights, 0.5 if density is None else density)
    raise ValueError(f"unknown merge method {method!r}")


def merge_state(method: str, states: list[dict[str, Tensor]], weights: list[float],
                base: dict[str, Tensor] | None = None, density: float | None = None) -> dict[str, Tensor]:
    """Merge whole layer state dicts (same keys) parameter by parameter."""
    return {k: merge_tensors(method, [s[k] for s in states], weights, None if base is None else base[k], density)
            for k in states[0]}
