"""What the benchmarks time with: one median-of-repeats timer and one fair forward pass."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def timed(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls (after one untimed warm-up call unless ``warmup`` is off),
    and the last call's result."""
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


@torch.inference_mode()
def pure_forward(model, batches) -> None:
    """The scorer's very inputs through the model, no KV cache: a fair forward (packed choices as scored)."""
    for b in batches:
        model(**b.model_inputs(model.dtype), use_cache=False)
