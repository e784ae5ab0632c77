"""Heuristic layer-pruning baselines, each producing a plan for the same budget.

- ``last_n``:   drop the n layers just before the final one;
- ``shortgpt``: ShortGPT block influence BI_i = 1 - mean_tokens cos(input_i, output_i) on a
  calibration set; drop the n lowest;
- ``angular``:  Gromov et al., d(l, l+n) = arccos(cos(h_l, h_{l+n})) / pi on the last token; drop
  the n-block starting at the argmin;
- ``laco``:     LaCo-style layer collapse: layers l..l+n become one, theta_l + sum_k (theta_{l+k} - theta_l)
  (a task-arithmetic merge of ``member@j`` sources); the block whose collapsed model keeps the last
  hidden state closest (cosine) to the full model's on the calibration set wins; at most
  ``LACO_CANDIDATES`` blocks are collapsed and run, the ones ranked most similar by the angular distance;
- ``best_single``: the best of the above applied to each member alone (does cross-model stitching
  beat pruning the best single model?);
- ``best_seed``: the best of every plan a search is seeded with (each removal crossed with each member and
  merge): what a search must beat to earn its trials.

All of them look at hidden states captured with forward hooks on the decoder layers, so they work
on any Llama-layout model without relying on ``output_hidden_states`` conventions.
"""
from __future__ import annotations

from typing import Callable

import torch

from gptailor.family.family import Family
from gptailor.plan import Op, Plan
from gptailor.common.progress import Progress, listening, tick
from gptailor.stitch import Stitcher
from gptailor.eval.encoding import example_ids
from gptailor.eval.suite import Suite
from gptailor.analysis.states import Calibration, LayerStates, angular_distance, block_influence, layer_states

HEURISTICS = ("last_n", "shortgpt", "angular", "laco")
# What a baseline study can run: a heuristic on the base, the best heuristic x member, or the best seeded plan
# (every plan a search starts from, ``gptailor.search.seeds.seed_plans``), each picked on the search split.
BASELINES = (*HEURISTICS, "best_single", "best_seed")


def calibration_ids(suite: Suite, tokenizer, n: int = 64) -> list[list[int]]:
    """The token ids the heuristics and the layer analysis look at hidden states on: the suite's
    search-split examples (never the test split), each encoded exactly as scoring feeds it
    (``gptailor.eval.encoding.example_ids``: the chat template where the task asks for it, the same
    special tokens, prompt and target as scored)."""
    ids: list[list[int]] = []
    per_task = max(1, n // max(1, len(suite.tasks)))
    for task in suite:
        ids += [example_ids(tokenizer, task, ex) for ex in task.subset(per_task, "search")]
    return ids[:n]


def last_n_plan(family: Family, n: int, member: str = "base") -> Plan:
    L = family.n_layers
    return Plan.drop_positions(L, range(L - 1 - n, L - 1), member, family.name) if n else \
        Plan.identity(L, member, family.name)


def shortgpt_plan(family: Family, n: int, states: LayerStates, member: str = "base") -> Plan:
    bi = block_influence(states)
    gone = sorted(range(len(bi)), key=lambda i: (bi[i], -i))[:n]
    return Plan.drop_positions(family.n_layers, gone, member, family.name)


def angular_plan(family: Family, n: int, states: LayerStates, member: str = "base") -> Plan:
    if n == 0:
        return Plan.identity(family.n_layers, member, family.name)
    d = angular_distance(states, n)
    start = min(range(len(d)), key=lambda l: (d[l], -l))
    return Plan.drop_positions(family.n_layers, range(start, start + n), member, family.name)


def laco_plan_at(family: Family, n: int, start: int) -> Plan:
    """Collapse the base's layers start..start+n into position ``start``; drop the rest of the block.
    (Only for the base: for another member the formula needs a negative weight on its own layer.)"""
    L = family.n_layers
    ops = [Op.pick("base") for _ in range(L)]
    ops[start] = Op.merge({f"base@{j}": 1.0 for j in range(start + 1, start + n + 1)}, "task_arithmetic")
    for j in range(start + 1, start + n + 1):
        ops[j] = Op.drop()
    return Plan(tuple(ops), family.name)


LACO_CANDIDATES = 8  # collapsed models LaCo builds and runs: the rest are ranked out by one forward


def base_states(family: Family, texts: Calibration, member: str = "base",
                stitcher: Stitcher | None = None) -> LayerStates:
    """One forward of ``member`` with hooks: what ShortGPT, angular and LaCo's ranking all read."""
    model = (stitcher or Stitcher(family)).build(Plan.identity(family.n_layers, member, family.name))
    return layer_states(model, family.tokenizer, texts)


class SharedStates:
    """Each member's ``base_states`` on one set of texts, computed on first use and then shared: every
    heuristic that reads a member's statistics costs one forward of that member in all."""

    def __init__(self, family: Family, texts: Calibration, stitcher: Stitcher | None = None) -> None:
        self.family, self.texts, self.stitcher = family, texts, stitcher
        self._memo: dict[str, LayerStates] = {}

    def get(self, member: str = "base") -> LayerStates:
        if member not in self._memo:
            self._memo[member] = base_states(self.family, self.texts, member, self.stitcher)
        return self._memo[member]

    def of(self, member: str = "base") -> Callable[[], LayerStates]:
        """A thunk for ``member``'s statistics (what ``Precompute.heuristic_plan`` takes as ``states``)."""
        return lambda: self.get(member)


def laco_candidates(states: LayerStates, n: int, limit: int = LACO_CANDIDATES) -> list[int]:
    """Block starts LaCo tries, at most ``limit``: every start (never the final layer) when few, else
    the ``limit`` whose dropped layers ``start+1..start+n`` change the last-token state least (the
    angular distance d(start+1, start+1+n), from the one forward already made). Bounds LaCo's cost
    at ``limit`` stitched forwards instead of one per layer (27 on a 30-layer model)."""
    L = len(states.last_inputs) - 1
    starts = list(range(0, L - n - 1))
    if len(starts) <= limit:
        return starts
    d = angular_distance(states, n)
    return sorted(sorted(starts, key=lambda s: (d[s + 1], -s))[:limit])


def laco_plan(family: Family, n: int, texts: Calibration, stitcher: Stitcher | None = None,
              states: LayerStates | None = None, limit: int = LACO_CANDIDATES) -> Plan:
    """LaCo-style: collapse each candidate block and keep the one whose last hidden state is closest
    (cosine) to the full model's; at most ``limit`` candidates (``laco_candidates``)."""
    member = "base"
    if n == 0:
        return Plan.identity(family.n_layers, member, family.name)
    st = stitcher or Stitcher(family)
    states = states or base_states(family, texts, member, st)
    full = states.last_inputs[-1]
    best, best_sim = None, -2.0
    for start in laco_candidates(states, n, limit):
        tick()
        plan = laco_plan_at(family, n, start)
        out = layer_states(st.build(plan), family.tokenizer, texts).last_inputs[-1]
        sim = float(torch.nn.functional.cosine_similarity(out, full, dim=-1).mean())
        if sim > best_sim:
            best, best_sim = plan, sim
    return best if best is not None else last_n_plan(family, n, member)


def heuristic_plan(name: str, family: Family, n: int, texts: Calibration, member: str = "base",
                   stitcher: Stitcher | None = None, states: LayerStates | None = None,
                   progress: Progress | None = None) -> Plan:
    """One heuristic's plan for ``member`` (its own model) removing ``n`` layers; ``states`` (the
    member's ``base_states`` on ``texts``) saves the forward when several heuristics share it.
    ``progress`` (default: the listener in force) gets the forwards' ticks, and may stop them."""
    if name == "last_n":
        return last_n_plan(family, n, member)
    if name not in HEURISTICS:
        raise ValueError(f"unknown baseline {name!r}; use one of {', '.join(HEURISTICS)}")
    if name == "laco" and member != "base":
        raise ValueError("the LaCo collapse is defined for the base model only")
    with listening(progress):
        states = states or base_states(family, texts, member, stitcher)
        if name == "laco":
            return laco_plan(family, n, texts, stitcher, states)
        return (shortgpt_plan if name == "shortgpt" else angular_plan)(family, n, states, member)
