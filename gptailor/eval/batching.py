"""Batches of scored sequences: padding, and packing several multiple-choice continuations into one row with a block mask."""
from __future__ import annotations

from dataclasses import dataclass
import hashlib

import torch


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
