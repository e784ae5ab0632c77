"""SLERP: spherical interpolation between two members at t = w_b / (w_a + w_b)."""
from __future__ import annotations

import torch

from gptailor.merge.registry import MergeMethod, register

Tensor = torch.Tensor


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


def _merge(tensors: list[Tensor], weights: list[float], base: None) -> Tensor:
    return slerp(tensors[0], tensors[1], weights[1] / (weights[0] + weights[1]))


register(MergeMethod(
    name="slerp", merge=_merge, summary="spherical interpolation from the first member toward the second",
    min_members=2, max_members=2, normalises=True, ordered=True,
    mergekit_why_not="mergekit's slerp also interpolates the embeddings and head, which stay the base's here"))
