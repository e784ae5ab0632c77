"""Scoring stitched models on a task suite, and retention against the family's own members.

Speed matters more than anything here (a search calls this hundreds of times), so:
- examples are tokenized once per (task, fidelity) and kept as ready padded batches;
- each batch is one forward pass of the decoder; the LM head runs only at the scored positions
  (a 128k vocabulary times every position would dominate the cost otherwise).

Retention (DESIGN.md): mean over tasks of score / reference, where the reference is the base's
score, or the best member's where the base scores (near) zero -- a skill only a finetune has.
Perplexity is lower-is-better, so its "goodness" is 1 / perplexity.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .family import Family
from .plan import Plan
from .stitch import Stitcher, param_count
from .tasks import Suite, Task


@dataclass
class Reference:
    member: str  # whose score normalizes this task ("base" unless the base is near zero; "none" if nobody scores)
    value: float


@dataclass
class EvalResult:
    """Everything a trial records: per-task scores, retention, size and timings."""

    plan: str
    fidelity: int | None
    scores: dict[str, float]
    metrics: dict[str, str]
    task_retention: dict[str, float | None]
    references: dict[str, Reference]
    retention: float
    kept_layers: int
    n_layers: int
    params: int
    stitch_s: float
    score_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table for terminals and logs."""
        lines = [f"{'task':<16}{'metric':<12}{'score':>10}{'reference':>22}{'retention':>11}"]
        for t, v in self.scores.items():
            ref = self.references[t]
            r = self.task_retention[t]
            lines.append(f"{t:<16}{self.metrics[t]:<12}{v:>10.4f}{f'{ref.value:.4f} ({ref.member})':>22}"
                         f"{'-' if r is None else f'{100 * r:.1f}%':>11}")
        lines.append(f"retention {100 * self.retention:.1f}%  kept {self.kept_layers}/{self.n_layers} layers  "
                     f"params {self.params / 1e6:.2f}M  stitch {self.stitch_s * 1e3:.0f} ms  "
                     f"score {self.score_s * 1e3:.0f} ms")
        return "\n".join(lines)


@dataclass
class _Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor  # for each scored token: its row in the batch
    cols: torch.Tensor  # ... the position whose output predicts it
    targets: torch.Tensor  # ... the token itself
    row_ids: torch.Tensor  # for each batch row: its index in the task's flat row list
    n_rows: int


def metric_of(kind: str) -> str:
    return "perplexity" if kind == "perplexity" else "accuracy"


def goodness(kind: str, value: float) -> float:
    """Higher is better, zero is worst: accuracy as is, perplexity inverted."""
    if kind == "perplexity":
        return 0.0 if not math.isfinite(value) or value <= 0 else 1.0 / value
    return value


class Evaluator:
    """Scores plans of one family on one suite; caches tokenized batches and reference scores."""

    def __init__(self, family: Family, suite: Suite, stitcher: Stitcher | None = None, batch_size: int = 64,
                 near_zero: float = 0.05, max_length: int | None = None, head_chunk: int = 4096) -> None:
        self.family = family
        self.suite = suite
        self.stitcher = stitcher or Stitcher(family)
        self.batch_size = batch_size
        self.near_zero = near_zero
        self.head_chunk = head_chunk  # scored positions per LM-head call
        limit = getattr(family.config, "max_position_embeddings", 2048) or 2048
        self.max_length = min(max_length or limit, limit)
        self._batches: dict[tuple[str, int | None], tuple[list[_Batch], list[Any]]] = {}
        self._member_scores: dict[tuple[str, int | None], dict[str, float]] = {}

    # -- tokenization ---------------------------------------------------------------
    def _start_id(self) -> int:
        """What precedes the first scored token when the text itself gives nothing: BOS, else EOS."""
        tok = self.family.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def _encode_pair(self, ctx: str, cont: str) -> tuple[list[int], list[int]]:
        tok = self.family.tokenizer
        c = tok(ctx)["input_ids"]
        if not c:  # no BOS and an empty context: something must precede the first scored token
            c = [self._start_id()]
            return c, tok(cont, add_special_tokens=False)["input_ids"]
        whole = tok(ctx + cont)["input_ids"]
        t = whole[len(c):] if whole[: len(c)] == c and len(whole) > len(c) else tok(cont, add_special_tokens=False)["input_ids"]
        return c, t

    def _rows(self, task: Task, examples: list[dict]) -> tuple[list[tuple[list[int], list[int]]], list[Any]]:
        """Flat (context ids, scored ids) rows and, per example, what aggregates them."""
        rows, meta = [], []
        tok = self.family.tokenizer
        for ex in examples:
            if task.kind == "exact_match":
                rows.append(self._encode_pair(ex["prompt"], ex["target"]))
            elif task.kind == "multiple_choice":
                start = len(rows)
                rows += [self._encode_pair(ex["context"], ch) for ch in ex["choices"]]
                meta.append((start, len(ex["choices"]), ex["answer"]))
            else:
                ids = tok(ex["text"])["input_ids"]
                if len(ids) < 2:
                    ids = [self._start_id(), *ids]
                rows.append((ids[:1], ids[1:]))
        return rows, meta

    def _prepare(self, task: Task, fidelity: int | None) -> tuple[list[_Batch], list[Any]]:
        key = (task.name, fidelity)
        if key in self._batches:
            return self._batches[key]
        rows, meta = self._rows(task, task.subset(fidelity))
        pad = self.family.tokenizer.pad_token_id or 0
        order = sorted(range(len(rows)), key=lambda r: -(len(rows[r][0]) + len(rows[r][1])))
        batches = []
        for s in range(0, len(order), self.batch_size):
            chunk = order[s: s + self.batch_size]
            seqs, r_idx, c_idx, tgt = [], [], [], []
            for b, r in enumerate(chunk):
                ctx, cont = rows[r]
                cont = cont[: self.max_length - 1]
                ctx = ctx[max(0, len(ctx) + len(cont) - self.max_length):]
                seqs.append(ctx + cont)
                for k, t in enumerate(cont):
                    r_idx.append(b)
                    c_idx.append(len(ctx) + k - 1)
                    tgt.append(t)
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for b, s in enumerate(seqs):
                ids[b, : len(s)] = torch.tensor(s)
                mask[b, : len(s)] = 1
            dev = self.stitcher.device
            batches.append(_Batch(ids.to(dev), mask.to(dev), torch.tensor(r_idx, device=dev),
                                  torch.tensor(c_idx, device=dev), torch.tensor(tgt, device=dev),
                                  torch.tensor(chunk), len(rows)))
        self._batches[key] = (batches, meta)
        return batches, meta

    # -- scoring --------------------------------------------------------------------
    @torch.inference_mode()
    def _row_stats(self, model, batches: list[_Batch]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per flat row: sum of log-probs of the scored tokens, all-argmax-correct flag, token count."""
        n = batches[0].n_rows
        logp, correct, count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.bool), torch.zeros(n)
        for b in batches:
            hidden = model.model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                 use_cache=False).last_hidden_state
            picked = hidden[b.rows, b.cols]
            tok_lp, hit = [], []
            for s in range(0, picked.shape[0], self.head_chunk):  # bounded memory for big vocabularies
                logits = model.lm_head(picked[s: s + self.head_chunk]).float()
                tgt = b.targets[s: s + self.head_chunk]
                tok_lp.append(logits.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(logits, dim=-1))
                hit.append(logits.argmax(-1) == tgt)
            tok_lp, hit = torch.cat(tok_lp), torch.cat(hit)
            nb = b.input_ids.shape[0]
            dev = tok_lp.device
            row_lp = torch.zeros(nb, dtype=torch.float64, device=dev).index_add_(0, b.rows, tok_lp.double())
            misses = torch.zeros(nb, device=dev).index_add_(0, b.rows, (~hit).float())
            cnt = torch.zeros(nb, device=dev).index_add_(0, b.rows, torch.ones_like(tok_lp))
            logp[b.row_ids] = row_lp.cpu()
            correct[b.row_ids] = (misses == 0).cpu() & (cnt > 0).cpu()
            count[b.row_ids] = cnt.cpu()
        return logp, correct, count

    def score_task(self, model, task: Task, fidelity: int | None = None) -> float:
        batches, meta = self._prepare(task, fidelity)
        logp, correct, count = self._row_stats(model, batches)
        if task.kind == "exact_match":
            return float(correct.float().mean())
        if task.kind == "multiple_choice":
            hits = [int(torch.argmax(logp[s: s + k])) == ans for s, k, ans in meta]
            return sum(hits) / len(hits)
        return float(math.exp(-logp.sum() / max(1.0, float(count.sum()))))

    def score_model(self, model, fidelity: int | None = None) -> dict[str, float]:
        return {t.name: self.score_task(model, t, fidelity) for t in self.suite}

    # -- references -----------------------------------------------------------------
    def member_scores(self, member: str, fidelity: int | None = None) -> dict[str, float]:
        """A family member's own scores (its own model, embeddings and head included), once per fidelity."""
        key = (member, fidelity)
        if key not in self._member_scores:
            model = self.stitcher.build(Plan.identity(self.family.n_layers, member, self.family.name),
                                        shared_from=member)
            self._member_scores[key] = self.score_model(model, fidelity)
        return self._member_scores[key]

    def references(self, fidelity: int | None = None) -> dict[str, Reference]:
        base = self.member_scores("base", fidelity)
        refs = {}
        for t in self.suite:
            g = goodness(t.kind, base[t.name])
            if g >= self.near_zero or (t.kind == "perplexity" and g > 0):  # a perplexity is never "zero skill"
                refs[t.name] = Reference("base", base[t.name])
                continue
            best = max(self.family.member_names,
                       key=lambda m: goodness(t.kind, self.member_scores(m, fidelity)[t.name]))
            value = self.member_scores(best, fidelity)[t.name]
            refs[t.name] = Reference(best, value) if goodness(t.kind, value) > 0 else Reference("none", value)
        return refs

    # -- the main entry -------------------------------------------------------------
    def evaluate(self, plan: Plan, fidelity: int | None = None) -> EvalResult:
        """Stitch ``plan``, score it at ``fidelity`` examples per task, and compute retention."""
        refs = self.references(fidelity)
        t0 = time.perf_counter()
        model = self.stitcher.build(plan)
        t1 = time.perf_counter()
        scores = self.score_model(model, fidelity)
        t2 = time.perf_counter()
        kinds = {t.name: t.kind for t in self.suite}
        task_ret: dict[str, float | None] = {}
        for name, v in scores.items():
            ref = refs[name]
            g_ref = goodness(kinds[name], ref.value)
            task_ret[name] = None if ref.member == "none" or g_ref <= 0 else goodness(kinds[name], v) / g_ref
        valid = [r for r in task_ret.values() if r is not None]
        return EvalResult(
            plan=plan.to_text(), fidelity=fidelity, scores=scores,
            metrics={n: metric_of(k) for n, k in kinds.items()}, task_retention=task_ret, references=refs,
            retention=sum(valid) / len(valid) if valid else 0.0, kept_layers=plan.n_kept,
            n_layers=len(plan), params=param_count(model), stitch_s=t1 - t0, score_s=t2 - t1)
