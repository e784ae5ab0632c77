"""Batches of scored sequences: padding, and packing several multiple-choice continuations into one row with a block mask."""
from __future__ import annotations

from dataclasses import dataclass
import hashlib
from typing import Any

import torch

from gptailor.eval.encoding import context_text, encode_pair, encode_text
from gptailor.eval.tasks import Task


@dataclass
class _Batch:
    """One forward pass's worth of sequences, and where in its output each scored token is read.

    A sequence is a context followed by one continuation (a plain row) or, for multiple choice, by all
    the choices that share that context (packed): then ``segments`` says which part each position is in
    (0 context, j the j-th choice, -1 padding) and ``position_ids`` restart after the context for every
    choice, so each choice sees exactly what it would see alone, and the context is run once."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # 2D padding mask (1 = token)
    rows: torch.Tensor  # for each scored token: its row in the batch
    cols: torch.Tensor  # ... the position whose output predicts it
    targets: torch.Tensor  # ... the token itself
    flat: torch.Tensor  # ... its index in the task's flat row list (one row per choice / example)
    n_rows: int
    stop_rows: torch.Tensor | None = None  # exact match: batch rows whose next argmax must be a stop ...
    stop_cols: torch.Tensor | None = None  # ... at this position (the target's last token)
    stop_flat: torch.Tensor | None = None  # ... and their flat rows
    segments: torch.Tensor | None = None  # packed batches only: per position 0 context, j choice j, -1 pad
    position_ids: torch.Tensor | None = None  # packed batches only
    key: str = ""  # digest of the ids, padding and packing: the batch's identity in the prefix cache
    score_key: str = ""  # ... and of where it is read (scored tokens, stops): the identity of its scores

    def model_inputs(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """What the decoder gets: a 2D padding mask, or for packed sequences a 4D additive mask (a position
        sees earlier context positions and earlier positions of its own choice) and the position ids."""
        if self.segments is None:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        return {"input_ids": self.input_ids, "attention_mask": packed_mask(self.segments, dtype),
                "position_ids": self.position_ids}


def packed_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, L, L) additive mask (0 seen, dtype's min hidden) for sequences laid out as context then
    choices: query q sees key k <= q when k is in the context or in q's own choice. Padding sees itself only
    (a fully hidden row would give NaN in some kernels; its output is never read). Built per forward from
    the segment ids, so cached batches stay O(L), not O(L^2)."""
    n = segments.shape[1]
    idx = torch.arange(n, device=segments.device)
    causal = idx[:, None] >= idx[None, :]
    q, k = segments[:, :, None], segments[:, None, :]
    seen = causal & ((k == 0) | (k == q)) & (k >= 0) & (q >= 0)
    seen |= torch.eye(n, dtype=torch.bool, device=segments.device)
    mask = torch.zeros(seen.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~seen, torch.finfo(dtype).min)[:, None]


def batch_digest(*tensors: torch.Tensor | None) -> str:
    """A digest of a batch's token ids, padding mask and packing (segments, positions): the same digest
    means the same forward input, so a cached hidden state of it can be reused."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(b"-" if t is None else repr(tuple(t.shape)).encode() + t.contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class _Seq:
    """A context and the continuations scored after it, each with its flat row index."""

    ctx: list[int]
    conts: list[tuple[int, list[int]]]

    @property
    def length(self) -> int:
        return len(self.ctx) + sum(len(c) for _, c in self.conts)


PACKABLE_ATTENTION = ("sdpa", "eager")  # implementations that take a custom 4D mask as is


def blocks(n: int, edges: tuple[int, ...] | list[int] = ()) -> list[tuple[int, int]]:
    """The example ranges ``[lo, hi)`` a task's first ``n`` examples are batched in: cut at every edge below
    ``n``. Why: with a search's Hyperband rungs as edges (``Evaluator.align_batches``), the batches of
    fidelity k are exactly the first batches of every higher fidelity, so the prefix cache reuses their
    states across fidelities: a promoted plan re-runs none of its lower rung's examples, and a plan first
    scored at a high rung starts from the states lower-rung plans left."""
    cuts = sorted({e for e in edges if 0 < e < n})
    return list(zip([0, *cuts], [*cuts, n])) if n else []


class Batcher:
    """A task's examples as ready forward batches: tokenized (``gptailor.eval.encoding``: the one rule, shared
    with the calibration texts), cut to ``max_length``, packed and padded once per (task, fidelity, split,
    packed), then reused by every plan scored. ``batch_size`` counts forward rows: a packed doc is one row.
    ``pack_choices``: a multiple-choice doc's shared context run once for all its choices. Also the
    per-vocabulary stop masks of exact match, built once per stop list."""

    def __init__(self, tokenizer, config, device: torch.device, batch_size: int, max_length: int,
                 pack_choices: bool = True) -> None:
        self.tokenizer = tokenizer
        self.config = config  # the family's: its vocabulary size and EOS ids make the stop masks
        self.device = device  # where the batches live: the stitcher's
        self.batch_size = batch_size
        self.max_length = max_length
        self.pack_choices = pack_choices
        self.edges: tuple[int, ...] = ()  # example counts where batches are cut (``blocks``): a search's rungs
        self._batches: dict[tuple, tuple[list[_Batch], list[Any]]] = {}
        self._stop_masks: dict[tuple[str, ...], torch.Tensor] = {}

    def context(self, task: Task, text: str) -> tuple[str, bool]:
        return context_text(self.tokenizer, task, text)

    def encode_pair(self, task: Task, ctx: str, cont: str) -> tuple[list[int], list[int]]:
        return encode_pair(self.tokenizer, task, ctx, cont)

    def rows(self, task: Task, examples: list[dict]) -> tuple[list[tuple[list[int], list[int]]], list[Any]]:
        """Flat (context ids, scored ids) rows and, per example, what aggregates them."""
        rows, meta = [], []
        tok = self.tokenizer
        for ex in examples:
            if task.kind == "exact_match":
                rows.append(self.encode_pair(task, ex["prompt"], ex["target"]))
            elif task.kind == "multiple_choice":
                start = len(rows)
                ctx = ex["context"]
                ctxs = ctx if isinstance(ctx, list) else [ctx] * len(ex["choices"])
                rows += [self.encode_pair(task, c, ch) for c, ch in zip(ctxs, ex["choices"])]
                meta.append((start, ex.get("lengths") or [len(ch) for ch in ex["choices"]], ex["answer"]))
            else:
                ids = encode_text(tok, ex["text"])
                rows.append((ids[:1], ids[1:]))
        return rows, meta

    def _plain(self, r: int, ctx: list[int], cont: list[int]) -> _Seq:
        """Flat row ``r`` alone, cut to ``max_length`` as lm-eval does: the continuation kept, the context cut
        from the left."""
        cont = cont[: self.max_length - 1]
        return _Seq(ctx[max(0, len(ctx) + len(cont) - self.max_length):], [(r, cont)])

    def _sequences(self, task: Task, rows: list[tuple[list[int], list[int]]], meta: list[Any], packed: bool
                   ) -> list[_Seq]:
        """The forward rows: one per flat row, or (``packed``) one per multiple-choice doc and context, holding
        all the choices that share that context (split in several when longer than ``max_length``). Choices
        with contexts of their own (lm-eval's partial evaluation, e.g. winogrande) stay one row each."""
        if not packed:
            return [self._plain(r, c, t) for r, (c, t) in enumerate(rows)]
        seqs: list[_Seq] = []
        for start, lens, _ in meta:
            groups: dict[tuple[int, ...], list[int]] = {}
            for r in range(start, start + len(lens)):
                groups.setdefault(tuple(rows[r][0]), []).append(r)
            for ctx, members in groups.items():
                cur = _Seq(list(ctx), [])
                for r in members:
                    cont = rows[r][1]
                    if len(ctx) + len(cont) > self.max_length:  # too long even alone: cut as a plain row
                        seqs.append(self._plain(r, list(ctx), cont))
                        continue
                    if cur.conts and cur.length + len(cont) > self.max_length:
                        seqs.append(cur)
                        cur = _Seq(list(ctx), [])
                    cur.conts.append((r, cont))
                if cur.conts:
                    seqs.append(cur)
        return seqs

    def prepare(self, task: Task, fidelity: int | None, split: str, packed: bool | None = None
                ) -> tuple[list[_Batch], list[Any]]:
        """Tokenized, padded batches of a task's examples, built once. ``packed`` (default: ``pack_choices``
        for multiple choice) runs a doc's shared context once for all its choices. With ``edges`` the
        examples are cut into blocks at those counts first (``blocks``)."""
        if packed is None:
            packed = self.pack_choices and task.kind == "multiple_choice"
        packed = packed and task.kind == "multiple_choice"
        key = (task.name, fidelity, split, packed, self.edges)
        if key in self._batches:
            return self._batches[key]
        examples = task.subset(fidelity, split)
        rows, meta = self.rows(task, examples)
        seqs = self._sequences(task, rows, meta, packed)
        example_of = self._example_of_row(task, rows, meta)
        batches = []
        for lo, hi in blocks(len(examples), self.edges):
            block = sorted((q for q in seqs if lo <= example_of[q.conts[0][0]] < hi), key=lambda q: -q.length)
            batches += [self._batch(chunk, len(rows), task.kind == "exact_match")
                        for chunk in (block[s: s + self.batch_size] for s in range(0, len(block), self.batch_size))]
        self._batches[key] = (batches, meta)
        return batches, meta

    @staticmethod
    def _example_of_row(task: Task, rows: list, meta: list[Any]) -> list[int]:
        """For each flat row, the example it belongs to (multiple choice: one row per choice)."""
        if task.kind != "multiple_choice":
            return list(range(len(rows)))
        out = [0] * len(rows)
        for e, (start, lens, _) in enumerate(meta):
            out[start: start + len(lens)] = [e] * len(lens)
        return out

    def _batch(self, chunk: list[_Seq], n_rows: int, stop: bool) -> _Batch:
        """Right-padded ids and the gather indices of every scored token; segments and positions when packed."""
        pad = self.tokenizer.pad_token_id or 0
        width = max(q.length for q in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        seg = torch.full((len(chunk), width), -1, dtype=torch.long)
        pos = torch.zeros((len(chunk), width), dtype=torch.long)
        r_idx, c_idx, tgt, flat, s_rows, s_cols, s_flat = [], [], [], [], [], [], []
        for b, q in enumerate(chunk):
            c = len(q.ctx)
            ids[b, :c] = torch.tensor(q.ctx)
            seg[b, :c] = 0
            pos[b, :c] = torch.arange(c)
            off = c
            for j, (r, cont) in enumerate(q.conts):
                if cont:
                    ids[b, off: off + len(cont)] = torch.tensor(cont)
                seg[b, off: off + len(cont)] = j + 1
                pos[b, off: off + len(cont)] = torch.arange(c, c + len(cont))
                for k, t in enumerate(cont):  # token k is predicted by the previous token of its own choice
                    r_idx.append(b)
                    c_idx.append(c - 1 if k == 0 else off + k - 1)
                    tgt.append(t)
                    flat.append(r)
                s_rows.append(b)
                s_cols.append(c - 1 if not cont else off + len(cont) - 1)
                s_flat.append(r)
                off += len(cont)
            mask[b, :off] = 1
        dev = self.device
        packed = any(len(q.conts) > 1 for q in chunk)
        key = batch_digest(ids, mask, seg if packed else None, pos if packed else None)

        def t(x: list[int]) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.long, device=dev)

        read = [torch.tensor(x, dtype=torch.long) for x in (r_idx, c_idx, tgt, *((s_rows, s_cols) if stop else ()))]
        return _Batch(ids.to(dev), mask.to(dev), t(r_idx), t(c_idx), t(tgt), t(flat), n_rows,
                      t(s_rows) if stop else None, t(s_cols) if stop else None, t(s_flat) if stop else None,
                      seg.to(dev) if packed else None, pos.to(dev) if packed else None, key,
                      batch_digest(torch.tensor([len(read)]), *read) + key)

    def stop_mask(self, until: list[str]) -> torch.Tensor:
        """Per vocabulary id: does greedy generation stop right there (EOS, or text beginning with a stop)?"""
        key = tuple(until)
        if key not in self._stop_masks:
            tok = self.tokenizer
            n = max(len(tok), int(getattr(self.config, "vocab_size", 0) or 0))
            texts = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=False)
            mask = torch.zeros(n, dtype=torch.bool)
            for i, t in enumerate(texts):
                mask[i] = any(t.startswith(u) for u in until)
            eos = self.config.eos_token_id
            for e in ([eos] if isinstance(eos, int) else list(eos or [])) + [tok.eos_token_id]:
                if e is not None and 0 <= e < n:
                    mask[e] = True
            self._stop_masks[key] = mask
        return self._stop_masks[key]


def packs(model) -> bool | None:
    """None (the default: pack multiple choice) unless ``model``'s attention takes no custom 4D mask."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return None if impl in PACKABLE_ATTENTION else False
