"""Merging one layer across members. One file per method, each registering its ``MergeMethod`` (name,
needs base, member count, normalises, defaults, mergekit name, searchable, the function) in ``METHODS``;
the formulas are mergekit's, so an exported mergekit YAML reproduces what we built."""
from gptailor.merge.registry import METHODS, MergeMethod, get_method, merge_state, merge_tensors, register
from gptailor.merge import linear as _linear, task_arithmetic as _task_arithmetic, ties as _ties  # noqa: F401
from gptailor.merge import slerp as _slerp  # noqa: F401  (each module registers its method on import)
from gptailor.merge import dare_ties as _dare_ties, dare_linear as _dare_linear  # noqa: F401

__all__ = ["METHODS", "MergeMethod", "get_method", "merge_state", "merge_tensors", "register"]
