"""Linear merge (mergekit ``linear``): sum_m w_m * theta_m / sum_m w_m."""
from __future__ import annotations

import torch

from gptailor.merge.registry import MergeMethod, register

Tensor = torch.Tensor


def linear(tensors: list[Tensor], weights: list[float]) -> Tensor:
    total = sum(weights)
    out = torch.zeros_like(tensors[0], dtype=torch.float32)
    for t, w in zip(tensors, weights):
        out += t.float() * (w / total)
    return out.to(tensors[0].dtype)


register(MergeMethod(
    name="linear", merge=lambda tensors, weights, base: linear(tensors, weights),
    summary="weighted mean of the members' tensors", normalises=True,
    mergekit="linear", mergekit_parameters={"normalize": True}, searchable=True))
