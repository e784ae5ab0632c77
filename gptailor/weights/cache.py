"""A least-recently-used cache of layer tensors, bounded in bytes.

Why bytes and not entries: a cached layer of a 7B model is ~400 MB in bfloat16 and a tiny demo layer
is ~0.1 MB, so a count is either useless or dangerous. The budget comes from ``cache_mb`` (a Family or
Stitcher argument), else ``$GPTAILOR_CACHE_MB``, else a quarter of the memory free on the device the
family computes on (psutil for the CPU, ``torch.cuda.mem_get_info`` for CUDA).

The budget bounds what the cache keeps; a built model holds its own references, so an entry evicted
while a model still uses it lives until that model is dropped.
"""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from typing import Callable, Hashable

import torch

from gptailor.common.limits import SettingsError, env_number

CACHE_ENV = "GPTAILOR_CACHE_MB"
DEFAULT_FRACTION = 0.25  # of the free memory, leaving room for activations and the built models
MB = 2 ** 20

State = dict[str, torch.Tensor]


def state_bytes(state: State) -> int:
    """Bytes a state dict occupies, counting tensors that share storage once."""
    seen: dict[int, int] = {}
    for t in state.values():
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def free_bytes(device: torch.device) -> int:
    """Memory currently free on ``device`` (available RAM for the CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def cache_budget(device: torch.device, cache_mb: float | None = None) -> tuple[int, str]:
    """The cache budget in bytes and where it came from (shown by ``python -m gptailor info``):
    the ``cache_mb`` argument, else ``GPTAILOR_CACHE_MB``, else a share of the free memory."""
    if cache_mb is not None:
        if isinstance(cache_mb, bool) or not isinstance(cache_mb, (int, float)) or not 0 <= cache_mb < math.inf:
            raise SettingsError(f"cache_mb must be a number of megabytes >= 0 (0 turns the cache off), got {cache_mb!r}")
        return int(cache_mb * MB), "cache_mb argument"
    if os.environ.get(CACHE_ENV, "").strip():
        return int(env_number(CACHE_ENV, 0, unit="megabytes") * MB), f"${CACHE_ENV}"
    free = free_bytes(device)
    return int(DEFAULT_FRACTION * free), f"{DEFAULT_FRACTION:.0%} of {free / 2 ** 30:.1f} GiB free on {device.type}"


class ByteCache:
    """Thread-safe LRU of layer state dicts whose total size stays within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.data: OrderedDict[Hashable, tuple[State, int]] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = 0
        self._lock = threading.Lock()  # a UI serves several requests at once from one family

    def get(self, key: Hashable) -> State | None:
        with self._lock:
            entry = self.data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.data.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: State) -> None:
        """Keep ``value`` unless it alone exceeds the budget; evict the oldest entries to fit."""
        size = state_bytes(value)
        with self._lock:
            old = self.data.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            if size > self.max_bytes:
                return
            self.data[key] = (value, size)
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, (_, n) = self.data.popitem(last=False)
                self.nbytes -= n

    def get_or_make(self, key: Hashable, make: Callable[[], State]) -> State:
        """The cached value for ``key``, else ``make()`` (run outside the lock), cached."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self.data.clear()
            self.nbytes = 0

    def count(self, kind: str) -> int:
        """Entries of one kind (keys are tuples starting with the kind: 'layer', 'merge', 'shared')."""
        with self._lock:
            return sum(1 for k in self.data if isinstance(k, tuple) and k and k[0] == kind)

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.data
