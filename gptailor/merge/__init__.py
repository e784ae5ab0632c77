"""Merging one layer across members (linear, task arithmetic, TIES, SLERP): mergekit's definitions, per tensor."""
