"""Merge methods by name: each method's facts in one entry, read by plans, stitching, the search space
and the mergekit export (mergekit's own layout: one file per method, each registering itself).

``merge_tensors`` and ``merge_state`` are the one way to run a method: they check the member count,
hand the base's tensor to the methods that read it, fill the method's default parameters and give a
method that draws random numbers a seed per tensor, so a plan always builds the same model.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

Tensor = torch.Tensor
MergeFn = Callable[..., Tensor]
"""``fn(tensors, weights, base, **parameters) -> Tensor``: one parameter merged across members.
``base`` is the base model's tensor at the same position (None unless ``needs_base``); the keyword
parameters are the method's ``defaults`` (filled), plus ``seed`` when the method is ``seeded``."""

_COUNT = {1: "one", 2: "two", 3: "three"}


@dataclass(frozen=True)
class MergeMethod:
    """Everything the rest of the engine needs to know about one merge method."""

    name: str  # as written in a plan: merge[name](...)
    merge: MergeFn
    summary: str  # one line: the formula
    needs_base: bool = False  # reads the base's tensor (task vectors are member - base)
    min_members: int = 1
    max_members: int | None = None
    normalises: bool = False  # weights are divided by their sum: scaling them all keeps the model
    ordered: bool = False  # member order changes the result (plans with swapped members differ)
    defaults: Mapping[str, float] = field(default_factory=dict)  # parameters a plan may set, e.g. density
    seeded: bool = False  # draws random numbers: gets a seed per tensor, so a plan is reproducible
    mergekit: str | None = None  # mergekit's merge_method; None when one mergekit config cannot express it
    mergekit_why_not: str = ""  # when mergekit is None: why not, for the export's message
    mergekit_parameters: Mapping[str, Any] = field(default_factory=dict)  # the config's top-level parameters
    mergekit_exact: bool = True  # mergekit rebuilds the very tensors we merge (not so for random drops)
    searchable: bool = False  # offered by the layerwise search space

    def count_error(self, n: int) -> str | None:
        """Why ``n`` members cannot be merged by this method, or None when they can."""
        lo, hi = self.min_members, self.max_members
        if lo <= n and (hi is None or n <= hi):
            return None
        if lo == hi:
            return f"{self.name} merges exactly {_COUNT.get(lo, lo)} members, got {n}"
        if hi is None:
            return f"{self.name} merges at least {_COUNT.get(lo, lo)} members, got {n}"
        return f"{self.name} merges {lo} to {hi} members, got {n}"

    def parameters(self, density: float | None = None) -> dict[str, float]:
        """The method's parameters with the plan's value where it gives one (only density today)."""
        given = {} if density is None else {"density": density}
        return {k: float(given.get(k, v)) for k, v in self.defaults.items()}


METHODS: dict[str, MergeMethod] = {}
"""Every registered method by name, in registration order (the search space's choice order)."""


def register(method: MergeMethod) -> MergeMethod:
    if method.name in METHODS:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; use one of {', '.join(METHODS)}") from None


def tensor_seed(seed: int, key: str) -> int:
    """The seed of one parameter's random draws: stable across runs and machines (unlike ``hash``)."""
    return zlib.crc32(f"{seed}:{key}".encode())


def merge_tensors(method: str, tensors: list[Tensor], weights: list[float], base: Tensor | None = None,
                  density: float | None = None, seed: int = 0) -> Tensor:
    """Merge one parameter across members; ``base`` is the base model's tensor at the same position."""
    m = get_method(method)
    problem = m.count_error(len(tensors))
    if problem:
        raise ValueError(problem)
    if m.needs_base and base is None:
        raise ValueError(f"{method} needs the base tensor")
    params: dict[str, Any] = m.parameters(density)
    if m.seeded:
        params["seed"] = seed
    return m.merge(tensors, weights, base if m.needs_base else None, **params)


def merge_state(method: str, states: list[dict[str, Tensor]], weights: list[float],
                base: dict[str, Tensor] | None = None, density: float | None = None,
                seed: int = 0) -> dict[str, Tensor]:
    """Merge whole layer state dicts (same keys) parameter by parameter. ``seed`` (the stitcher passes
    the layer position) and the parameter's name seed a random method's draws for that parameter."""
    return {k: merge_tensors(method, [s[k] for s in states], weights, None if base is None else base[k],
                             density, tensor_seed(seed, k))
            for k in states[0]}
