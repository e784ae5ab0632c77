"""KL divergence to a reference member on a task's own tokens: the ``--objective kl`` of a search.

Why: a plan's accuracy on a few examples per task is a coin-flip count (sd 3-5 points at 10-100
examples, issue #21); how far its next-token distributions moved from a model that does the task well is
a smooth function of the plan, measured at every scored token of the same forward. EvoPress (ICML 2025)
searches depth-pruned models on exactly this fitness.

The reference of a task is its retention reference member (the best member on the task under the
``family`` definition, the base under ``base``; the base where nobody scores). Its next-token
log-probabilities are kept only at the top ``k`` tokens of each scored position (a 49k-entry vocabulary
times every token would not fit a cache); the divergence is then the KL between the two distributions
coarse-grained to those ``k`` tokens plus one bucket for the rest of the vocabulary. Coarse-graining
never increases KL, so this is a lower bound of the full KL that is zero exactly when the plan puts the
reference's probabilities on the reference's top tokens, and equals the full KL when ``k`` covers the
vocabulary (``tests/test_divergence.py`` checks both against ``torch.nn.functional.kl_div``).

A position is a scored token of ``Evaluator._row_stats`` (a target token of exact match, a choice token
of multiple choice, every token of a perplexity text), in the order of the task's batches at that
fidelity and split, which are built once and shared by the reference and every plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_TOPK = 32  # next-token log-probabilities kept per position of the reference (EvoPress keeps a top-k too)
_FLOOR = 1e-12  # the "rest of the vocabulary" bucket never has exactly zero mass in float32


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, log-probabilities) of the ``k`` most likely next tokens at each position of ``logits``."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    values, indices = lp.topk(min(k, lp.shape[-1]), dim=-1)
    return indices, values


def topk_kl(ref_indices: torch.Tensor, ref_logprobs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per position, KL(reference || model) over the reference's top-k tokens plus a "rest" bucket."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    q = lp.gather(-1, ref_indices)
    p = ref_logprobs.float()
    p_rest = (1.0 - p.exp().sum(-1)).clamp(min=_FLOOR)
    q_rest = (1.0 - q.exp().sum(-1)).clamp(min=_FLOOR)
    return (p.exp() * (p - q)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())


@dataclass
class KLProbe:
    """One task's pass: either capturing the reference's top-k (``reference`` None) or comparing a model
    with it. ``Evaluator._row_stats`` feeds it each LM-head chunk in order and sums the divergence per
    flat row; ``per_example`` then averages each example's tokens."""

    k: int = DEFAULT_TOPK
    reference: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per LM-head chunk: (indices, logprobs)
    captured: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    member: str = ""  # whose top-k ``reference`` holds
    sums: torch.Tensor | None = None  # per flat row: summed divergence of its scored tokens
    values: list[float] = field(default_factory=list)  # per example, after a comparing pass
    _chunk: int = 0

    def start(self, n_rows: int, device: torch.device | str) -> None:
        self.sums = torch.zeros(n_rows, dtype=torch.float64, device=device)
        self._chunk = 0

    def feed(self, logits: torch.Tensor, flat: torch.Tensor) -> None:
        """One LM-head chunk: ``logits`` at its scored positions, ``flat`` their flat row numbers."""
        if self.reference is None:
            idx, lp = topk_logprobs(logits, self.k)
            self.captured.append((idx.cpu(), lp.cpu()))
            return
        if self._chunk >= len(self.reference):
            raise RuntimeError("KL reference has fewer scored positions than this pass: built on other batches")
        idx, lp = self.reference[self._chunk]
        self._chunk += 1
        kl = topk_kl(idx.to(logits.device), lp.to(logits.device), logits)
        self.sums.index_add_(0, flat, kl.double())

    def per_example(self, kind: str, count: torch.Tensor, meta: list[Any]) -> list[float]:
        """Each example's mean divergence per scored token: a row for exact match and perplexity, a doc's
        choices together for multiple choice."""
        sums, count = self.sums.cpu(), count.cpu().double()
        if kind == "multiple_choice":
            return [float(sums[s: s + len(lens)].sum() / count[s: s + len(lens)].sum().clamp(min=1))
                    for s, lens, _ in meta]
        return (sums / count.clamp(min=1)).tolist()


def mean_kl(per_task: dict[str, float | None]) -> float | None:
    """The search's cost under ``--objective kl``: the mean over the tasks that have a divergence."""
    vals = [v for v in per_task.values() if v is not None]
    return sum(vals) / len(vals) if vals else None
