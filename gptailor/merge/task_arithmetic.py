"""Task arithmetic (mergekit ``task_arithmetic``): base + sum_m w_m * (theta_m - base), weights not normalised."""
from __future__ import annotations

import torch

from gptailor.merge.registry import MergeMethod, register

Tensor = torch.Tensor


def task_arithmetic(base: Tensor, tensors: list[Tensor], weights: list[float]) -> Tensor:
    b = base.float()
    out = b.clone()
    for t, w in zip(tensors, weights):
        out += w * (t.float() - b)
    return out.to(base.dtype)


register(MergeMethod(
    name="task_arithmetic", merge=lambda tensors, weights, base: task_arithmetic(base, tensors, weights),
    summary="base + weighted sum of task vectors (member - base)", needs_base=True,
    mergekit="task_arithmetic", searchable=True))
