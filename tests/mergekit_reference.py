"""mergekit's own merge methods, called on plain tensors: the independent reference our merges are checked against."""
from __future__ import annotations

import torch


def mergekit_merge(name: str, tensors: list[torch.Tensor], base: torch.Tensor | None = None,
                   **parameters) -> torch.Tensor:
    """mergekit's merge method ``name`` on one tensor group: ``base`` (when given) first, then ``tensors``
    in order; ``parameters`` as in a mergekit config (per-input ones as lists in the order of ``tensors``)."""
    from mergekit.merge_methods.base import TensorGroup
    from mergekit.merge_methods.registry import get

    group = TensorGroup.from_tensors(([base] if base is not None else []) + list(tensors),
                                     base_index=0 if base is not None else None)
    return get(name)([group], parameters=parameters)[0]
