"""Hidden states at every layer boundary on calibration texts, and the per-layer statistics built on them (block influence, angular distance)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

from gptailor.common.progress import Progress, current as in_force

Calibration = Union[Sequence[str], Sequence[Sequence[int]]]
"""What hidden states are taken on: token ids as scoring encodes them (``search.baselines.calibration_ids``,
the chat template included), or plain texts, tokenized with the tokenizer's special tokens."""


@dataclass
class LayerStates:
    """What the heuristics need, accumulated batch by batch so memory stays small on big models."""

    cos_sum: list[float]  # per layer: sum over tokens of cos(input, output)
    n_tokens: int
    last_inputs: list[torch.Tensor]  # [L + 1] of (samples, hidden): h_0..h_L at the last token
    outputs: list[torch.Tensor] | None = None  # per layer, the first ``keep_tokens`` outputs (for CKA)


def _ids(tokenizer, texts: Calibration, max_length: int) -> list[list[int]]:
    """Each calibration entry as token ids, cut to ``max_length`` (ids are kept as given)."""
    return [list(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) if isinstance(t, str)
            else list(t)[:max_length] for t in texts]


def _pad(tokenizer, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of one batch, padded on the tokenizer's padding side."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(len(r) for r in rows)
    left = tokenizer.padding_side == "left"
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


@torch.inference_mode()
def layer_states(model, tokenizer, texts: Calibration, batch_size: int = 16, keep_tokens: int = 0,
                 max_length: int = 512, progress: Progress | None = None) -> LayerStates:
    """Hidden-state statistics of ``model`` on ``texts`` (token ids, or plain texts to tokenize).
    ``progress`` (default: the listener in force) gets a tick per batch, and may stop it there."""
    progress = progress or in_force()
    layers = model.model.layers
    L = len(layers)
    cos_sum = [0.0] * L
    outs: list[list[torch.Tensor]] = [[] for _ in range(L)]
    kept = [0] * L
    last: list[list[torch.Tensor]] = [[] for _ in range(L + 1)]
    current: dict[str, torch.Tensor] = {}

    def hook(i: int) -> Callable:
        def fn(_module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            m = current["mask"]
            xi, yi = x[m].float(), y[m].float()
            cos_sum[i] += float(torch.nn.functional.cosine_similarity(xi, yi, dim=-1).sum())
            if kept[i] < keep_tokens:
                take = yi[: keep_tokens - kept[i]].cpu()
                outs[i].append(take)
                kept[i] += take.shape[0]
            rows = torch.arange(x.shape[0], device=x.device)
            last[i].append(x[rows, current["last"]].float().cpu())
            if i == L - 1:
                last[L].append(y[rows, current["last"]].float().cpu())
        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    dev = next(model.parameters()).device
    n_tokens = 0
    rows = _ids(tokenizer, texts, max_length)
    try:
        for s in range(0, len(rows), batch_size):
            progress.tick()
            input_ids, attention = _pad(tokenizer, rows[s: s + batch_size])
            mask = attention.bool()
            if tokenizer.padding_side == "left":
                lastpos = torch.full((mask.shape[0],), mask.shape[1] - 1)
            else:
                lastpos = mask.sum(1) - 1
            current.update(mask=mask.to(dev), last=lastpos.to(dev))
            n_tokens += int(mask.sum())
            model(input_ids=input_ids.to(dev), attention_mask=attention.to(dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return LayerStates(cos_sum, n_tokens, [torch.cat(x) for x in last],
                       [torch.cat(x) for x in outs] if keep_tokens else None)


def block_influence(states: LayerStates) -> list[float]:
    """ShortGPT's BI per layer: 1 - mean cosine similarity between a layer's input and output."""
    return [1.0 - c / max(1, states.n_tokens) for c in states.cos_sum]


def angular_distance(states: LayerStates, n: int) -> list[float]:
    """d(l, l+n) for every start l (0..L-n), averaged over samples at the last token."""
    h = states.last_inputs
    L = len(h) - 1
    out = []
    for l in range(L - n + 1):
        cos = torch.nn.functional.cosine_similarity(h[l], h[l + n], dim=-1).clamp(-1, 1)
        out.append(float((torch.arccos(cos) / torch.pi).mean()))
    return out
