"""DARE with TIES' sign election (mergekit ``dare_ties``): task vectors dropped at random and rescaled
as in ``dare_linear``, then TIES' election, the agreeing entries summed (not divided by their weights:
mergekit's default ``normalize: false`` for this method) and added to base."""
from __future__ import annotations

import torch

from gptailor.merge.dare_linear import DENSITY, dropped_deltas
from gptailor.merge.registry import MergeMethod, register
from gptailor.merge.ties import elect

Tensor = torch.Tensor


def dare_ties(base: Tensor, tensors: list[Tensor], weights: list[float], density: float = DENSITY,
              seed: int = 0) -> Tensor:
    b = base.float()
    return elect(b, dropped_deltas(b, tensors, weights, density, seed), weights, normalise=False).to(base.dtype)


register(MergeMethod(
    name="dare_ties",
    merge=lambda tensors, weights, base, density, seed: dare_ties(base, tensors, weights, density, seed),
    summary="randomly dropped, rescaled task vectors, sign election, sum of the agreeing ones", needs_base=True,
    defaults={"density": DENSITY}, seeded=True,
    mergekit="dare_ties", mergekit_parameters={"normalize": False, "rescale": True}, mergekit_exact=False))
