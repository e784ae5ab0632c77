"""Scoring stitched models on a task suite, and retention against the family's own members.

Speed matters more than anything here (a search calls this hundreds of times), so:
- examples are tokenized once per (task, split, fidelity) and kept as ready padded batches;
- each batch is one forward pass of the decoder; the LM head runs only at the scored positions
  (a 128k vocabulary times every position would dominate the cost otherwise).

Metrics follow lm-evaluation-harness:
- ``exact_match``: the whole greedy answer up to a stop sequence (``until``) equals the target. Without a
  filter this is checked teacher-forced in the same single forward pass: every target token must be the
  argmax *and* the argmax after the target must be a stop (EOS, or a token that begins with a stop
  string), which is exactly when greedy generation yields the target and then stops. With a ``filter``
  (regex extract or "contains"), the answer is generated greedily, batched, and filtered as lm-eval does.
- ``multiple_choice``: ``acc`` (argmax of summed log-likelihood) and ``acc_norm`` (log-likelihood divided
  by the choice's length in characters, or the example's ``lengths``); the task says which one is the objective.
  A doc's context is run once, its choices packed after it (see ``_Batch``): the context is usually most of
  the tokens, and 4-8 choices would otherwise repeat it 4-8 times.
- ``perplexity``: per token; lower is better, so its "goodness" is 1 / perplexity.

Retention (docs/architecture.md) is the mean over tasks of goodness / reference goodness, with the references
fixed once (per study) at the full search split, never re-chosen per fidelity. Two definitions:
``base`` (the paper's: score / base score, a finetune can exceed 100%; tasks the base cannot do at all
are left out) and ``family`` (score / best member's score, capped at 100%: how much of the family's best
skill is kept).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from gptailor.family.family import Family
from gptailor.plan import Plan
from gptailor.common.progress import tick
from gptailor.stitch import Stitcher, param_count

if TYPE_CHECKING:
    from gptailor.eval.speed import SpeedSettings
from gptailor.eval.suite import Suite
from gptailor.eval.tasks import Task, TaskError
from gptailor.eval.batching import Batcher, _Batch, packs
from gptailor.eval.metrics import METRICS, apply_filter
from gptailor.eval.results import EvalResult, References, applicable_definition
from gptailor.eval.reference_scoring import ReferenceScoring
from gptailor.eval.prefix import PrefixCache, PrefixRun, pass_stride, prefix_cache_for, prefix_keys, trim_heap
from gptailor.eval.divergence import KLProbe, mean_kl


def aggregate(values: dict[str, list], objective: str) -> dict[str, float]:
    """Per-example values of each metric -> the task's scores by the registry's aggregations, the example
    count ``n`` and the objective's ``stderr`` (where the metric defines one)."""
    out: dict[str, float] = {name: METRICS[name].aggregation(v) for name, v in values.items()}
    out["n"] = len(next(iter(values.values())))
    err = METRICS[objective].stderr
    if err is not None:
        out["stderr"] = err(values[objective])
    return out


def metrics_of(values: dict[str, list], objective: str) -> dict[str, float]:
    """A task's metrics from its per-example values (``Evaluator.task_values``); perplexity adds its token count."""
    out = aggregate(values, objective)
    if "perplexity" in values:
        out["tokens"] = float(sum(c for _, c in values["perplexity"]))
    return out


def per_token(logp: torch.Tensor, count: torch.Tensor) -> list[float]:
    """Each row's mean log-probability per scored token (``loglik``): the target's, in the same forward as
    exact match; a longer target is not penalised for its length."""
    return (logp / count.clamp(min=1).double()).tolist()


def gold_probs(logp: torch.Tensor, meta: list[Any]) -> list[float]:
    """Each doc's gold-choice probability among its choices (``gold_prob``): the softmax of the choices'
    summed log-likelihoods, the smooth version of ``acc`` (its argmax)."""
    return [float(torch.softmax(logp[s: s + len(lens)], 0)[ans]) for s, lens, ans in meta]


class Evaluator(ReferenceScoring):
    """Scores plans of one family on one suite; caches tokenized batches and reference scores.

    ``split`` is the default split scored (``test``: held-out numbers unless asked otherwise); a search
    passes ``search``. ``definition`` is the default retention definition (None: the references' own
    default, ``family`` where a finetune holds a skill the base lacks). ``pack_choices``: score a
    multiple-choice doc's context once, its choices packed after it in one sequence (a 4D attention mask
    keeps them apart); off, or with an attention implementation that takes no 4D mask, one row per choice.
    ``batch_size`` counts forward rows: a packed doc is one row. ``prefix_cache``: True (the family's shared
    cache of prefix hidden states, ``gptailor.eval.prefix``), False (every forward from the embeddings), or
    a ``PrefixCache`` of the caller's.

    Its batches come from ``self.batcher`` (``gptailor.eval.batching.Batcher``); the members' references,
    the proxies and the KL references from ``ReferenceScoring`` (``gptailor.eval.reference_scoring``).
    """

    def __init__(self, family: Family, suite: Suite, stitcher: Stitcher | None = None, batch_size: int = 64,
                 near_zero: float = 0.05, max_length: int | None = None, head_chunk: int = 4096,
                 split: str = "test", definition: str | None = None, pack_choices: bool = True,
                 prefix_cache: bool | PrefixCache = True, kl_topk: int = 0) -> None:
        self.family = family
        self.suite = suite
        self.stitcher = stitcher or Stitcher(family)
        self.near_zero = near_zero
        self.head_chunk = head_chunk  # scored positions per LM-head call
        self.split = split
        applicable_definition(setting=definition)  # refuses anything but auto, family, base
        self.definition = definition
        limit = getattr(family.config, "max_position_embeddings", 2048) or 2048
        self.batcher = Batcher(family.tokenizer, family.config, self.stitcher.device, batch_size,
                               min(max_length or limit, limit), pack_choices)
        self.kl_topk = kl_topk  # > 0: every evaluate() also scores the KL to each task's reference (--objective kl)
        # ReferenceScoring's caches: the members' metrics, the references, the KL references
        self._member_scores: dict[tuple, dict[str, dict[str, float]]] = {}
        self._refs: dict[str, References] = {}
        self._kl_refs: dict[tuple, dict[str, list]] = {}  # (member, fidelity, split, k) -> task -> top-k per chunk
        if isinstance(prefix_cache, PrefixCache):
            self.prefix_cache: PrefixCache | None = prefix_cache
        else:
            self.prefix_cache = prefix_cache_for(family) if prefix_cache else None

    # -- batches (gptailor.eval.batching.Batcher; thin here for the tests and benches that reach them) ---
    def align_batches(self, fidelities: list[int] | tuple[int, ...]) -> None:
        """Cut every task's batches at these examples-per-task counts (a search's Hyperband rungs), so that a
        lower fidelity's batches are whole batches of every higher one and the prefix cache carries their
        states from rung to rung (``gptailor.eval.batching.blocks``). Scores are the same examples' scores;
        only how they are grouped into forwards changes (so the last bits of a log-likelihood may)."""
        self.batcher.edges = tuple(sorted({int(f) for f in fidelities if f and f > 0}))

    def _rows(self, task: Task, examples: list[dict]) -> tuple[list[tuple[list[int], list[int]]], list[Any]]:
        return self.batcher.rows(task, examples)

    def _prepare(self, task: Task, fidelity: int | None, split: str | None = None, packed: bool | None = None
                 ) -> tuple[list[_Batch], list[Any]]:
        return self.batcher.prepare(task, fidelity, split or self.split, packed)

    def stop_mask(self, until: list[str]) -> torch.Tensor:
        """Per vocabulary id: does greedy generation stop right there (EOS, or text beginning with a stop)?"""
        return self.batcher.stop_mask(until)

    # -- scoring --------------------------------------------------------------------
    @torch.inference_mode()
    def _row_stats(self, model, batches: list[_Batch], stop_mask: torch.Tensor | None = None,
                   prefix: PrefixRun | None = None, kl: KLProbe | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per flat row: sum of log-probs of the scored tokens, all-argmax-correct (and then stop) flag,
        token count. With ``prefix``, each batch starts from its deepest cached prefix state; ``kl`` sees
        the logits of every scored position (``gptailor.eval.divergence``)."""
        n = batches[0].n_rows
        dev = self.stitcher.device
        if kl is not None:
            kl.start(n, dev)
        logp = torch.zeros(n, dtype=torch.float64, device=dev)
        misses, count = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
        stops = torch.ones(n, dtype=torch.bool, device=dev)
        reuse = prefix is not None and kl is None  # a KL probe needs the logits themselves
        for b in batches:
            tick()  # a listener may stop the work between batches
            score_key = f"{self.head_chunk}|{b.score_key}"
            got = prefix.scored(b.key, score_key) if reuse else None
            if got is None:
                got = self._head_reads(model, b, prefix, stop_mask is not None, kl)
                if reuse:
                    prefix.keep_scores(score_key, got)
            tok_lp, hit = got["logp"], got["hit"]
            logp.index_add_(0, b.flat, tok_lp.double())
            misses.index_add_(0, b.flat, (~hit).float())
            count.index_add_(0, b.flat, torch.ones_like(misses[b.flat]))
            if "next" in got:
                stops[b.stop_flat] = stop_mask[got["next"].cpu().clamp(max=stop_mask.numel() - 1)].to(dev)
        correct = (misses == 0) & (count > 0) & stops
        return logp.cpu(), correct.cpu(), count.cpu()

    def _head_reads(self, model, b: _Batch, prefix: PrefixRun | None, stops: bool, kl: KLProbe | None
                    ) -> dict[str, torch.Tensor]:
        """One batch's forward and what the LM head reads from it: each scored token's log-prob (``logp``),
        whether it is the argmax (``hit``) and, for exact match, the argmax after the target (``next``)."""
        inputs = b.model_inputs(model.dtype)
        if prefix is not None:
            hidden = prefix.hidden(model, inputs, b.key)
        else:
            hidden = model.model(**inputs, use_cache=False).last_hidden_state
        picked = hidden[b.rows, b.cols]
        tok_lp, hit = [], []
        for s in range(0, picked.shape[0], self.head_chunk):  # bounded memory for big vocabularies
            logits = model.lm_head(picked[s: s + self.head_chunk]).float()
            tgt = b.targets[s: s + self.head_chunk]
            tok_lp.append(logits.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(logits, dim=-1))
            hit.append(logits.argmax(-1) == tgt)
            if kl is not None:
                kl.feed(logits, b.flat[s: s + self.head_chunk])
        out = {"logp": torch.cat(tok_lp), "hit": torch.cat(hit)}
        if stops and b.stop_rows is not None:
            out["next"] = model.lm_head(hidden[b.stop_rows, b.stop_cols]).float().argmax(-1)
        return out

    @torch.inference_mode()
    def generate(self, model, task: Task, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy answers, batched with left padding, each cut at its first stop sequence (lm-eval's ``until``)."""
        tok = self.family.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        dev = self.stitcher.device
        size, max_length = self.batcher.batch_size, self.batcher.max_length
        out: list[str] = []
        for s in range(0, len(prompts), size):
            tick()
            enc = []
            for p in prompts[s: s + size]:
                text, special = self.batcher.context(task, p)
                enc.append(tok(text, add_special_tokens=special)["input_ids"][-max_length:])
            width = max(len(e) for e in enc)
            ids = torch.full((len(enc), width), pad, dtype=torch.long)
            mask = torch.zeros((len(enc), width), dtype=torch.long)
            for b, e in enumerate(enc):
                ids[b, width - len(e):] = torch.tensor(e)
                mask[b, width - len(e):] = 1
            gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                                 eos_token_id=tok.eos_token_id)
            for row in gen[:, width:].tolist():
                text = tok.decode(row, skip_special_tokens=True)
                for u in task.until:
                    text = text.split(u, 1)[0]
                out.append(text)
        return out

    def task_values(self, model, task: Task, fidelity: int | None = None, split: str | None = None,
                    prefix: PrefixRun | None = None, kl: KLProbe | None = None) -> dict[str, list]:
        """Per example, in the split's order, every metric's value (perplexity: (log-likelihood, tokens) pairs):
        what ``task_metrics`` aggregates. The first k values of the whole split are the values at fidelity k
        (fidelity k is the split's first k examples), so a table of them answers any fidelity
        (``bench/search_regret.py``). ``prefix``: score through the prefix cache; generation never does.
        ``kl``: also capture the top-k, or score the divergence to a reference, in the same forward."""
        split = split or self.split
        if task.kind == "exact_match" and task.filter:
            examples = task.subset(fidelity, split)
            n_new = task.max_gen_toks or 16 + max(len(self.family.tokenizer(e["target"], add_special_tokens=False)
                                                      ["input_ids"]) for e in examples)
            answers = self.generate(model, task, [e["prompt"] for e in examples], n_new)
            return {"exact_match": [float(apply_filter(a, e["target"], task.filter)) for a, e in zip(answers, examples)]}
        batches, meta = self._prepare(task, fidelity, split, packs(model))
        stop = self.stop_mask(task.until) if task.kind == "exact_match" else None
        logp, correct, count = self._row_stats(model, batches, stop, prefix, kl)
        if kl is not None and kl.reference is not None:
            kl.values = kl.per_example(task.kind, count, meta)
        if task.kind == "exact_match":
            return {"exact_match": correct.float().tolist(), "loglik": per_token(logp, count)}
        if task.kind == "multiple_choice":
            acc = [float(int(torch.argmax(logp[s: s + len(lens)])) == ans) for s, lens, ans in meta]
            norm = [float(int(torch.argmax(logp[s: s + len(lens)] / torch.tensor(lens, dtype=torch.float64))) == ans)
                    for s, lens, ans in meta]
            return {"acc": acc, "acc_norm": norm, "gold_prob": gold_probs(logp, meta)}
        return {"perplexity": list(zip(logp.tolist(), count.tolist()))}

    def task_metrics(self, model, task: Task, fidelity: int | None = None, split: str | None = None,
                     prefix: PrefixRun | None = None) -> dict[str, float]:
        """Every metric of a task (lm-eval's names), the example count and the objective's stderr.
        ``prefix``: score through the prefix cache (``prefix_run``); generation-based tasks never do."""
        return metrics_of(self.task_values(model, task, fidelity, split, prefix), task.objective_metric)

    def example_scores(self, model, task: Task, fidelity: int | None = None, split: str | None = None
                       ) -> list[dict[str, Any]]:
        """Per example, in the split's order: multiple choice ``lls`` (one per choice), ``acc``, ``acc_norm``,
        ``gold_prob``; exact match (teacher-forced) ``exact_match``, ``loglik``. What lm-eval's ``log_samples`` holds, to compare."""
        if task.kind == "perplexity" or (task.kind == "exact_match" and task.filter):
            raise TaskError(f"task {task.name!r}: per-example scores are for multiple choice and exact match")
        batches, meta = self._prepare(task, fidelity, split or self.split, packs(model))
        stop = self.stop_mask(task.until) if task.kind == "exact_match" else None
        logp, correct, count = self._row_stats(model, batches, stop)
        if task.kind == "exact_match":
            return [{"exact_match": float(c), "loglik": ll} for c, ll in zip(correct.tolist(), per_token(logp, count))]
        out = []
        for (start, lens, ans), gold in zip(meta, gold_probs(logp, meta)):
            lls = logp[start: start + len(lens)]
            norm = lls / torch.tensor(lens, dtype=torch.float64)
            out.append({"lls": lls.tolist(), "acc": float(int(torch.argmax(lls)) == ans),
                        "acc_norm": float(int(torch.argmax(norm)) == ans), "gold_prob": gold})
        return out

    def model_values(self, model, fidelity: int | None = None, split: str | None = None,
                     plan: Plan | None = None, shared_from: str = "base",
                     kl: dict[str, KLProbe] | None = None) -> dict[str, dict[str, list]]:
        """Every task's per-example values (``task_values``). ``plan`` (what ``model`` was stitched from, with
        ``shared_from``'s embeddings) lets the forwards reuse and keep prefix states; without it every forward
        runs from the embeddings. ``kl``: a probe per task that has one (capture or compare, same forwards)."""
        # a KL probe reads the logits, so for it the last state (not the scores) is what a re-score reuses
        run = self.prefix_run(model, plan, shared_from, fidelity, split, keep_last=bool(kl)) if plan is not None else None
        out = {}
        for k, t in enumerate(self.suite):
            tick(f"scoring {t.name}", k, len(self.suite.tasks))
            out[t.name] = self.task_values(model, t, fidelity, split, run, (kl or {}).get(t.name))
            if run is not None and self.stitcher.device.type == "cpu":
                trim_heap()  # the cache's entries would otherwise pin the freed activations (prefix.trim_heap)
        return out

    def model_details(self, model, fidelity: int | None = None, split: str | None = None,
                      plan: Plan | None = None, shared_from: str = "base",
                      kl: dict[str, KLProbe] | None = None) -> dict[str, dict[str, float]]:
        """Every task's metrics, aggregated from ``model_values``."""
        return self.details_of(self.model_values(model, fidelity, split, plan, shared_from, kl))

    def details_of(self, values: dict[str, dict[str, list]]) -> dict[str, dict[str, float]]:
        """Every task's metrics from its per-example values."""
        return {t.name: metrics_of(values[t.name], t.objective_metric) for t in self.suite}

    def prefix_run(self, model, plan: Plan, shared_from: str = "base", fidelity: int | None = None,
                   split: str | None = None, keep_last: bool = False) -> PrefixRun | None:
        """The prefix-cache pass for scoring ``model`` (stitched from ``plan``) on the suite, or None when
        the cache is off. Its stride keeps one pass's new states within a share of the budget. The state
        after the last kept layer is kept only with ``keep_last``: otherwise the head's reads are (``scored``)."""
        cache = self.prefix_cache
        if cache is None or not cache.enabled:
            return None
        keys = prefix_keys(self.family, plan, shared_from, self.stitcher.device, self.stitcher.dtype)
        width = int(model.config.hidden_size) * torch.finfo(model.dtype).bits // 8
        layer_bytes = sum(b.input_ids.numel() * width for t in self.suite
                          if not (t.kind == "exact_match" and t.filter)
                          for b in self._prepare(t, fidelity, split, packs(model))[0])
        points = keys.n_kept if keep_last else keys.n_kept - 1
        return PrefixRun(cache, keys, pass_stride(points, layer_bytes, cache.max_bytes), keep_last)

    def objective_scores(self, details: dict[str, dict[str, float]]) -> dict[str, float]:
        """Each task's objective metric picked out of its full metrics."""
        return {t.name: details[t.name][t.objective_metric] for t in self.suite}

    def score_model(self, model, fidelity: int | None = None, split: str | None = None) -> dict[str, float]:
        return self.objective_scores(self.model_details(model, fidelity, split))

    # -- the main entry -------------------------------------------------------------
    def evaluate(self, plan: Plan, fidelity: int | None = None, split: str | None = None,
                 references: References | None = None, definition: str | None = None,
                 speed: bool | SpeedSettings = False, kl_topk: int | None = None) -> EvalResult:
        """Stitch ``plan``, score it at ``fidelity`` examples per task of ``split``, and compute retention
        against fixed references (by default: every member on the whole split). With ``speed``, also time
        the stitched model's prefill and decode against the base's (search trials leave it off)."""
        split = split or self.split
        refs = references or self.references(split)
        definition = applicable_definition(setting=definition or self.definition, refs=refs)
        t0 = time.perf_counter()
        model = self.stitcher.build(plan)
        t1 = time.perf_counter()
        k = self.kl_topk if kl_topk is None else kl_topk  # > 0: also the KL to the references (--objective kl)
        probes = self.kl_probes(refs, definition, fidelity, split, k) if k else None
        before = self.prefix_cache.snapshot() if self.prefix_cache is not None else None
        details = self.model_details(model, fidelity, split, plan, kl=probes)
        t2 = time.perf_counter()
        extra = {"prefix_cache": self.prefix_cache.snapshot().minus(before).to_dict()} if before is not None else {}
        kl = None
        if probes:
            kls = {name: sum(p.values) / max(1, len(p.values)) for name, p in probes.items()}
            kl = {"scores": kls, "mean": mean_kl(kls), "topk": k,
                  "reference": {name: p.member for name, p in probes.items()}}
        return self.result_of(plan, fidelity, split, refs, definition, details, param_count(model), t1 - t0,
                              t2 - t1, extra, self.speed(model, speed) if speed else None, kl)

    def result_of(self, plan: Plan, fidelity: int | None, split: str, refs: References, definition: str,
                  details: dict[str, dict[str, float]], params: int, stitch_s: float = 0.0, score_s: float = 0.0,
                  extra: dict[str, Any] | None = None, speed: dict[str, Any] | None = None,
                  kl: dict[str, Any] | None = None) -> EvalResult:
        """The ``EvalResult`` of a plan's metrics: scores, retentions against ``refs``, the proxies (``kl``: the
        divergence to the references, when scored). One rule, for a scored plan and for one answered from a
        table of per-example values."""
        tasks = {t.name: t for t in self.suite}
        scores = self.objective_scores(details)
        means, task_rets = refs.retentions(scores, {n: t.kind for n, t in tasks.items()})
        proxies = {}
        proxy_refs = refs.for_proxy()
        if proxy_refs is not None:
            pscores = self.proxy_scores(details)
            pmeans, ptasks = proxy_refs.retentions(pscores, proxy_refs.kinds)
            proxies["loglik"] = {"metrics": dict(proxy_refs.kinds), "scores": pscores, "retentions": pmeans,
                                 "task_retentions": ptasks}
        if kl is not None:
            proxies["kl"] = kl
        return EvalResult(
            plan=plan.to_text(), fidelity=fidelity, scores=scores,
            metrics={n: t.objective_metric for n, t in tasks.items()},
            references=refs.table(definition), kept_layers=plan.n_kept,
            n_layers=len(plan), params=params, stitch_s=stitch_s, score_s=score_s, extra=extra or {}, split=split,
            definition=definition, retentions=means, task_retentions=task_rets, details=details,
            speed=speed, proxies=proxies)

    def speed(self, model, settings: bool | SpeedSettings = True) -> dict[str, Any]:
        """``model``'s measured tokens/s against the base's, built by the same stitcher on the same device."""
        from gptailor.eval.speed import SpeedSettings, compare

        base = self.stitcher.build(Plan.identity(self.family.n_layers, family=self.family.name))
        return compare(model, base, settings if isinstance(settings, SpeedSettings) else None)
