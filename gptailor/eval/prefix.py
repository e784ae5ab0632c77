"""Hidden states of plan prefixes, kept so a trial runs only the layers after what it shares with earlier trials.

Why: teacher-forced scoring (exact match without a filter, multiple choice, perplexity) is a pure function of
the examples and the layers applied so far, so the hidden states after kept layer j depend only on the
sequence of (position, op) of the first j kept layers, the embeddings, and the batch. A search's plans share
long prefixes (SMAC and evolution change a few positions of an incumbent; seeded plans share everything below
their first drop; the Editor and Evaluate re-score the base and the best on every click), so most of a
trial's layers were already run by an earlier one.

What makes two prefixes the same (``PrefixKeys``):
- each kept layer's (position, op), with a pick of a member whose layer is bit-for-bit the base's written as
  a pick of the base, and a merge's sources rewritten the same way (a merge of equal tensors is the same
  arithmetic, whatever the members are called); drops are implicit (a dropped position applies nothing);
- the embeddings' member (the base's, unless a member's own model is scored with its own embeddings);
- the batch: a digest of its token ids, padding and packing (``_Batch.key``), so a changed example set,
  another fidelity or another padding misses;
- the device and dtype the model computes in.

Where states are kept (``pass_stride``, ``store_points``): after every ``stride``-th kept layer before the
last, with ``stride`` chosen so that one scoring pass adds at most a quarter of the cache's budget. Why: a pass that
stored every layer of a big batch would evict, within one trial, the shallow states that every later trial
reuses; with a quarter per pass, the least-recently-used order keeps the states the last few trials hit
(a hit refreshes an entry) and drops the deep, one-off ones first. After the last kept layer the cache keeps
what the LM head read from it instead (``PrefixRun.scored``: each scored token's log-prob and argmax hit, a
few bytes a token, keyed by the plan, the final norm and head, and where the batch is read): re-scoring the
same plan on the same examples (a promoted trial's lower rung, the Editor, Evaluate, Compare, references)
then runs neither a layer nor the head, and the one state only that plan could reuse takes no room. A KL
probe needs the logits themselves, so a pass with one keeps the last state as before.

Across fidelities (``Evaluator.align_batches``): a search cuts each task's batches at its Hyperband rungs,
so the batches of a lower rung are whole batches of every higher one and the states and scores above carry
from rung to rung; otherwise a fidelity's batches (sorted by length, then padded) share nothing with another's.

The budget: ``prefix_cache_mb`` (an ``Evaluator`` argument), else ``$GPTAILOR_PREFIX_CACHE_MB``, else a
tenth of the memory free on the compute device; 0 turns the cache off. One cache per family object, shared
by every evaluator of that family (the app's Evaluate, Editor and Compare hold evaluators of their own).

Generation-based exact match (a task with a ``filter``) generates token by token and does not use the cache.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import hashlib
import math
import mmap
import os
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from gptailor.common.limits import SettingsError, env_number
from gptailor.family.family import Family
from gptailor.plan import Op, Plan, split_source
from gptailor.weights.cache import MB, ByteCache, free_bytes

PREFIX_ENV = "GPTAILOR_PREFIX_CACHE_MB"
DEFAULT_FRACTION = 0.10  # of the free memory; the layer cache takes a quarter
PASS_SHARE = 0.25  # of the budget, at most, added by one scoring pass


def prefix_budget(device: torch.device, prefix_cache_mb: float | None = None) -> tuple[int, str]:
    """The prefix cache's budget in bytes and where it came from (shown by ``python -m gptailor info``)."""
    if prefix_cache_mb is not None:
        if (isinstance(prefix_cache_mb, bool) or not isinstance(prefix_cache_mb, (int, float))
                or not 0 <= prefix_cache_mb < math.inf):
            raise SettingsError(f"prefix_cache_mb must be a number of megabytes >= 0 (0 turns the prefix cache "
                                f"off), got {prefix_cache_mb!r}")
        return int(prefix_cache_mb * MB), "prefix_cache_mb argument"
    if os.environ.get(PREFIX_ENV, "").strip():
        return int(env_number(PREFIX_ENV, 0, unit="megabytes") * MB), f"${PREFIX_ENV}"
    free = free_bytes(device)
    return int(DEFAULT_FRACTION * free), f"{DEFAULT_FRACTION:.0%} of {free / 2 ** 30:.1f} GiB free on {device.type}"


@dataclass
class PrefixStats:
    """What the cache did: batch forwards that looked it up, hits, layers skipped and run, and the time saved
    (estimated per forward as the layers skipped times that forward's measured time per layer run)."""

    lookups: int = 0
    hits: int = 0
    layers_skipped: int = 0
    layers_run: int = 0
    run_s: float = 0.0
    saved_s: float = 0.0
    hits_by_depth: Counter = field(default_factory=Counter)  # kept layers skipped -> forwards

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def layer_share_skipped(self) -> float:
        total = self.layers_skipped + self.layers_run
        return self.layers_skipped / total if total else 0.0

    def minus(self, before: "PrefixStats") -> "PrefixStats":
        """What happened since ``before`` (a copy taken earlier)."""
        return PrefixStats(self.lookups - before.lookups, self.hits - before.hits,
                           self.layers_skipped - before.layers_skipped, self.layers_run - before.layers_run,
                           self.run_s - before.run_s, self.saved_s - before.saved_s,
                           self.hits_by_depth - before.hits_by_depth)

    def to_dict(self) -> dict[str, Any]:
        return {"lookups": self.lookups, "hits": self.hits, "hit_rate": round(self.hit_rate, 4),
                "layers_skipped": self.layers_skipped, "layers_run": self.layers_run,
                "run_s": round(self.run_s, 4), "saved_s": round(self.saved_s, 4)}


class PrefixCache:
    """A byte-bounded LRU of hidden states keyed by (canonical prefix, embeddings, batch, device, dtype)."""

    def __init__(self, max_bytes: int, source: str = "") -> None:
        self.store = ByteCache(max_bytes)
        self.source = source
        self.stats = PrefixStats()
        self._layer_s: dict[str, float] = {}  # batch -> seconds per layer, last measured
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.store.max_bytes > 0

    @property
    def max_bytes(self) -> int:
        return self.store.max_bytes

    def snapshot(self) -> PrefixStats:
        with self._lock:
            return copy.deepcopy(self.stats)

    def deepest(self, keys: list[tuple], batch_key: str) -> tuple[int, torch.Tensor | None]:
        """The deepest cached state for this batch: (kept layers it has applied, the state), or (0, None)."""
        for j in range(len(keys), 0, -1):
            entry = self.store.data.get((keys[j - 1], batch_key))  # peek: misses at deeper points are expected
            if entry is not None:
                got = self.store.get((keys[j - 1], batch_key))  # refresh its recency (and count the hit)
                if got is not None:
                    return j, got["h"]
        return 0, None

    def put(self, key: tuple, batch_key: str, hidden: torch.Tensor) -> None:
        self.store.put((key, batch_key), {"h": off_heap(hidden)})

    def scores(self, key: tuple, score_key: str) -> dict[str, torch.Tensor] | None:
        """The head's reads kept for a whole plan on one batch (``put_scores``), or None."""
        return self.store.get((key, score_key))

    def put_scores(self, key: tuple, score_key: str, scores: dict[str, torch.Tensor]) -> None:
        """Small (a few values per scored token): they stay on the heap, which ``trim_heap`` keeps compact."""
        self.store.put((key, score_key), scores)

    def record(self, batch_key: str, start: int, n_kept: int, seconds: float) -> None:
        """Account one batch forward that started after ``start`` of ``n_kept`` kept layers and took ``seconds``.
        The time saved is the layers skipped times the batch's last measured time per layer run."""
        run = n_kept - start
        with self._lock:
            s = self.stats
            s.lookups += 1
            s.layers_run += run
            s.run_s += seconds
            if run:
                self._layer_s[batch_key] = seconds / run
            if start:
                s.hits += 1
                s.layers_skipped += start
                s.hits_by_depth[start] += 1
                s.saved_s += self._layer_s.get(batch_key, 0.0) * start

    def clear(self) -> None:
        self.store.clear()


def off_heap(t: torch.Tensor) -> torch.Tensor:
    """A copy of a CPU tensor in its own anonymous memory map (a GPU tensor is returned as is).

    Why: cached states live for many trials, the activations around them for one layer. A state in its own
    map goes back to the system the moment it is evicted, and never sits in malloc's heap among the
    activations. Alone it did not bring the peak within the budget (measured on smol: the small entries
    still pinned the heap; ``trim_heap`` hands those pages back)."""
    if t.device.type != "cpu" or t.numel() == 0:
        return t
    buf = mmap.mmap(-1, t.numel() * t.element_size())
    out = torch.frombuffer(buf, dtype=t.dtype, count=t.numel()).view(t.shape)  # the tensor keeps buf alive
    return out.copy_(t)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; absent on macOS and musl
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Hand the pages malloc holds free back to the system (glibc's ``malloc_trim``; a no-op without it).

    Why: a cached entry outlives the activations allocated around it, so malloc's heap cannot shrink past it
    and the freed activations stay resident: measured on the smol family, the heap grew ~0.5 GB in 14 trials
    with the cache on and the process's peak went 15-50% past the budget. Trimmed after each task's batches,
    the heap stays where it is with the cache off (``bench/prefix_cache.py`` prints the peak)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def summarize_prefix(per_trial: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """A study's prefix-cache figures from its trials' (``PrefixStats.to_dict``): batch forwards, hit rate,
    share of layers skipped, the time saved; None when no trial recorded any."""
    rows = [r for r in per_trial if r]
    if not rows:
        return None
    total = {k: sum(float(r.get(k) or 0) for r in rows) for k in ("lookups", "hits", "layers_skipped",
                                                                    "layers_run", "saved_s", "run_s")}
    layers = total["layers_skipped"] + total["layers_run"]
    return {"trials": len(rows), "lookups": int(total["lookups"]),
            "hit_rate": total["hits"] / total["lookups"] if total["lookups"] else 0.0,
            "layers_skipped": total["layers_skipped"] / layers if layers else 0.0,
            "saved_s": total["saved_s"], "run_s": total["run_s"]}


def describe_prefix(summary: dict[str, Any] | None) -> str:
    """A few words for a table cell or a terminal: the hit rate and the time saved."""
    if not summary:
        return "-"
    saved = summary["saved_s"]
    when = f"{saved:.1f} s" if saved < 120 else f"{saved / 60:.1f} min"
    return f"{summary['hit_rate']:.0%} hits, ~{when} saved"


_CACHES: "weakref.WeakKeyDictionary[Family, PrefixCache]" = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def prefix_cache_for(family: Family, prefix_cache_mb: float | None = None) -> PrefixCache:
    """The family's one prefix cache (made on first use, with the budget of that first call)."""
    with _CACHES_LOCK:
        cache = _CACHES.get(family)
        if cache is None:
            budget, source = prefix_budget(family.device, prefix_cache_mb)
            cache = _CACHES[family] = PrefixCache(budget, source)
        return cache


@dataclass(frozen=True)
class PrefixKeys:
    """Per kept layer j (1-based), the key of the state after the first j kept layers; and the kept count."""

    keys: tuple[tuple, ...]
    scores: tuple = ()  # the key of what the LM head reads from the last state (``PrefixRun.scored``)

    @property
    def n_kept(self) -> int:
        return len(self.keys)


def canonical_op(family: Family, position: int, op: Op) -> str:
    """``op`` at ``position`` as text, with members whose layer is the base's written as ``base``."""
    def canon(member: str, at: int) -> str:
        return "base" if family.layer_equals_base(member, at) else member

    if op.kind == "pick":
        return f"{position}:{canon(op.member or 'base', position)}"
    sources = []
    for name, _ in op.weights:
        m, p = split_source(name)
        sources.append(canon(m, position) if p is None else f"{canon(m, p)}@{p}")
    weights = tuple((s, w) for s, (_, w) in zip(sources, op.weights))
    return f"{position}:{Op('merge', weights=weights, method=op.method, density=op.density).to_text()}"


def prefix_keys(family: Family, plan: Plan, shared_from: str, device: torch.device, dtype: torch.dtype
                ) -> PrefixKeys:
    """The keys of every kept-layer prefix of ``plan`` built with ``shared_from``'s embeddings."""
    embed = "base" if shared_from == "base" or family.io_equals_base(shared_from, "embed") else shared_from
    h = hashlib.sha256(f"{family.name}|{embed}|{device}|{dtype}".encode())
    keys = []
    for i in plan.kept_positions:
        h.update(b"|" + canonical_op(family, i, plan.ops[i]).encode())
        keys.append(("prefix", h.copy().hexdigest()))
    h.update(f"|head:{shared_from}".encode())  # the final norm and LM head: the base's, or shared_from's
    return PrefixKeys(tuple(keys), ("scores", h.hexdigest()))


def pass_stride(n_kept: int, layer_bytes: int, budget: int) -> int:
    """Keep a state after every ``stride``-th kept layer, so that one scoring pass (``layer_bytes``: the bytes
    of one layer's states over all its batches) adds at most ``PASS_SHARE`` of the budget (0: keep none)."""
    if budget <= 0 or layer_bytes <= 0:
        return 0
    per_pass = int(PASS_SHARE * budget // layer_bytes)  # states of every batch the pass may add
    return max(1, math.ceil(n_kept / per_pass)) if per_pass >= 1 else n_kept


def store_points(start: int, n_kept: int, stride: int, last: bool = True) -> list[int]:
    """Kept-layer counts after which a forward that starts after ``start`` keeps its state: every
    ``stride``-th and (``last``) the last one (see the module's docstring for why)."""
    if stride <= 0 or n_kept <= start:
        return []
    end = n_kept if last else n_kept - 1
    points = [j for j in range(start + 1, end + 1) if j % stride == 0]
    if last and (not points or points[-1] != n_kept):
        points.append(n_kept)
    return points


@dataclass
class PrefixRun:
    """One scoring pass of one model through the cache: the cache, the model's prefix keys, the stride."""

    cache: PrefixCache
    keys: PrefixKeys
    stride: int = 1
    keep_last: bool = False  # keep the last state too (a KL probe reads logits, not the scores ``scored`` keeps)

    def scored(self, batch_key: str, score_key: str) -> dict[str, torch.Tensor] | None:
        """What the LM head read from this plan's last state on this batch (``keep_scores``), if kept: the
        same plan re-scored on the same examples (a promoted trial's lower rung, the Editor re-scoring the
        same plan, a reference) then runs no layer and no head. Counted as a forward that skipped every layer."""
        got = self.cache.scores(self.keys.scores, score_key)
        if got is not None:
            self.cache.record(batch_key, self.keys.n_kept, self.keys.n_kept, 0.0)
        return got

    def keep_scores(self, score_key: str, scores: dict[str, torch.Tensor]) -> None:
        self.cache.put_scores(self.keys.scores, score_key, scores)

    def hidden(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], batch_key: str) -> torch.Tensor:
        """The batch's last hidden state, from the deepest cached prefix when there is one; keeps new states."""
        n = self.keys.n_kept
        start, state = self.cache.deepest(list(self.keys.keys), batch_key)
        t0 = time.perf_counter()

        def keep(j: int, h: torch.Tensor) -> None:  # at once: the layer's output is freed as without the cache
            self.cache.put(self.keys.keys[j - 1], batch_key, h)

        hidden, _ = forward_hidden(model, inputs, start, state, store_points(start, n, self.stride, self.keep_last),
                                   sink=keep)
        self.cache.record(batch_key, start, n, time.perf_counter() - t0)
        return hidden


@contextlib.contextmanager
def layers_from(model: torch.nn.Module, start: int) -> Iterator[None]:
    """Let ``model.model``'s own forward run only its decoder layers from kept layer ``start`` on: its layer
    list and config (``num_hidden_layers``, ``layer_types``) are swapped for their tails while inside.
    The model is the caller's own (the evaluator builds one per evaluation), so nothing else sees it."""
    inner = model.model
    layers, config = inner.layers, inner.config
    if start == 0:
        yield
        return
    tail = copy.copy(config)
    tail.num_hidden_layers = len(layers) - start
    if getattr(config, "layer_types", None) is not None:
        tail.layer_types = list(config.layer_types)[start:]
    inner.layers, inner.config = torch.nn.ModuleList(list(layers)[start:]), tail
    try:
        yield
    finally:
        inner.layers, inner.config = layers, config


def forward_hidden(model: torch.nn.Module, inputs: dict[str, torch.Tensor], start: int = 0,
                   state: torch.Tensor | None = None, keep: list[int] = (),
                   sink: Callable[[int, torch.Tensor], None] | None = None
                   ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The decoder's last hidden state for ``inputs``, starting after kept layer ``start`` from ``state``
    (the hidden state there) when given; and the states after each kept-layer count in ``keep`` (handed to
    ``sink(j, state)`` as each layer ends instead, when given: then none is held until the forward ends).
    Runs transformers' own forward (masks, rotary embeddings, position ids), so it is the same computation."""
    inner = model.model
    kept: dict[int, torch.Tensor] = {}
    handles = []
    for j in keep:
        def grab(_module, _args, output, j=j):
            h = output[0] if isinstance(output, tuple) else output
            if sink is None:
                kept[j] = h
            else:
                sink(j, h)
        handles.append(inner.layers[j - 1].register_forward_hook(grab))
    try:
        with layers_from(model, start):
            if start:
                rest = {k: v for k, v in inputs.items() if k != "input_ids"}
                out = inner(inputs_embeds=state, **rest, use_cache=False)
            else:
                out = inner(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out.last_hidden_state, kept


__all__ = ["PREFIX_ENV", "PrefixCache", "PrefixKeys", "PrefixRun", "PrefixStats", "canonical_op", "describe_prefix",
           "forward_hidden", "layers_from", "off_heap", "pass_stride", "prefix_budget", "prefix_cache_for",
           "prefix_keys", "store_points", "summarize_prefix", "trim_heap"]
