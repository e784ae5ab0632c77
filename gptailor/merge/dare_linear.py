"""DARE, linear (mergekit ``dare_linear``): each task vector's entries dropped at random, the survivors
rescaled, then task arithmetic: base + sum_m w_m * drop(theta_m - base), weights not normalised.

mergekit's definition (0.1.5, ``GeneralizedTaskArithmeticMerge`` with ``sparsify.bernoulli``): keep an
entry with probability ``density`` (a Bernoulli mask), then rescale the kept entries so the task vector's
L1 norm is unchanged (the paper's 1/density, exactly rather than in expectation). Seeded: a parameter's
masks come from one ``torch.Generator`` seeded by ``registry.tensor_seed(position, name)``, drawn on the
CPU member after member in the plan's order, so a plan builds the same model on any device.
"""
from __future__ import annotations

import torch

from gptailor.merge.registry import MergeMethod, register

Tensor = torch.Tensor
DENSITY = 0.5  # our default (mergekit's, 1.0, would drop nothing; the export always writes it)


def random_drop(delta: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """Keep each entry with probability ``density``, rescaled to the L1 norm of ``delta`` (float32).
    Draws nothing at density 1, as mergekit, so the members after it see the same random stream."""
    if density >= 1:
        return delta
    mask = torch.bernoulli(torch.full(delta.shape, float(density), dtype=torch.float32), generator=generator)
    masked = delta * mask.to(delta.device)
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < 1e-7 or after < 1e-7:  # mergekit's eps: nothing left to rescale
        return masked
    return masked * (before / after)


def dropped_deltas(base: Tensor, tensors: list[Tensor], weights: list[float], density: float,
                   seed: int) -> Tensor:
    """The weighted, randomly dropped task vectors (members stacked on dim 0, float32)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([random_drop(t.float() - base, density, g) * w for t, w in zip(tensors, weights)])


def dare_linear(base: Tensor, tensors: list[Tensor], weights: list[float], density: float = DENSITY,
                seed: int = 0) -> Tensor:
    b = base.float()
    return (b + dropped_deltas(b, tensors, weights, density, seed).sum(dim=0)).to(base.dtype)


register(MergeMethod(
    name="dare_linear",
    merge=lambda tensors, weights, base, density, seed: dare_linear(base, tensors, weights, density, seed),
    summary="base + weighted sum of randomly dropped, rescaled task vectors", needs_base=True,
    defaults={"density": DENSITY}, seeded=True,
    mergekit="dare_linear", mergekit_parameters={"normalize": False, "rescale": True}, mergekit_exact=False))
